#!/usr/bin/env bash
# Issue 24 on the GPU machine (after the wheels prelude of shared/device/README.md; carry .whl,
# .redis and .before, a copy of the tree before the worker pools: `mkdir .before && git archive
# f8d201f services | tar -x -C .before`). PARTS picks what runs, in this order:
#   articles: the whole stack (text on the 7B shape at half the card, image on the SD-1.5 shape
#             with buckets 1/8), the curve of 1, 16, 32 and 64 articles at once through a pool of
#             32 workers, then the same curve through the tree before (4 workers, stages one after
#             another), then 64 at once through a pool of 64; the same text and image services
#             serve all three;
#   seed:     the seed paper's sequential flow (nf4 + LoRA generate, then 3 PNDM images);
#   fp8:      the FP8 UNet against fp16 (bench/image_fp8.py: image difference and s/image).
set -o pipefail
PARTS=",${PARTS:-articles},"
on() { [[ "$PARTS" == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
if on articles; then
  timeout "${ARTICLES_TIMEOUT:-560}" python -m bench.article_bench --out "$OUT/article_bench.json" \
    --curve 1,16,32,64 --workers 32 --before-src .before --before-workers 4 \
    --before-curve 1,16,32,64 --extra-pool 64 --extra-curve 64 --text-memory 0.5 \
    --image-env ARTICLEFORGE_IMAGE_BATCH_BUCKETS=1,8 --time-budget "${BUDGET:-480}" \
    --logs /tmp/ab_logs 2>&1 | grep -v Warn | cut -c1-700 | tail -40
  for f in /tmp/ab_logs/*.log; do tail -c 3000 "$f" > "$OUT/$(basename "$f").tail"; done
fi
if on seed; then
  timeout 300 python -m bench.article_bench --out "$OUT/seed_flow.json" --skip-stack --baseline \
    2>&1 | grep -v Warn | tail -5
fi
if on fp8; then
  ${FP8_CMD:-true}
fi
