#!/usr/bin/env bash
# Issue 22 on the GPU machine, one call of at most ten minutes (after the wheels prelude of
# shared/device/README.md; carry .whl). In order of what matters most, each part under its own
# timeout so that one overrun does not cost the rest:
#   1. the GPU kernel tests (tests/text/test_kernels_gpu.py): Triton against torch;
#   2. text_bench: burst (bf16, fp8), single, sweep at 64, fp8 (the W8A16 planner), fp8kv (fp8
#      weights and an E4M3 KV cache) and nf4 (prefix too where SCEN names it);
#   3. fp8_profile matmul: bf16 / W8A8 / W8A16 per row count for the four 7B linear shapes;
#   4. fp8_profile accuracy: bf16, W8A8 and weight-only fp8 against a float32 reference;
#   5. text_engine_gpu with fp8 weights and the E4M3 KV cache: one stream and 64 at once in
#      process, with torch.profiler.
# TB (seconds, default 220) is text_bench's --time-budget; SCEN its --scenarios; PARTS (default
# all: kernels,bench,matmul,accuracy,engine) which of the five run, for a call short of time.
set -o pipefail
PARTS=",${PARTS:-kernels,bench,matmul,accuracy,engine},"
on() { [[ "$PARTS" == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
on kernels && timeout 100 python -m pytest -q -p no:cacheprovider tests/text/test_kernels_gpu.py \
    2>&1 | tail -4 | tee "$OUT/kernel_tests.txt"
on bench && timeout $(( ${TB:-220} + 50 )) python bench/text_bench.py --git-commit "${COMMIT:-unknown}" \
    --scenarios "${SCEN:-burst,single,sweep,fp8,fp8kv,nf4}" --levels 64 --fp8-levels 64 --nf4-levels 16 \
    --burst-servers bf16,fp8 --repeats 3 --nf4-repeats 3 --prefix-repeats 3 \
    --time-budget "${TB:-220}" --out "$OUT/text_bench.json" 2>&1 | tee "$OUT/text_bench.log" \
    | grep -v Warn | tail -34
on bench && grep -h "fp8 matmul plan" "$OUT"/text_bench.server-fp8.log | cut -c1-1200
on matmul && timeout 70 python bench/fp8_profile.py --parts matmul --out "$OUT/fp8_profile_matmul.json" \
    2>&1 | grep -v Warn | tail -50
on accuracy && timeout 75 python bench/fp8_profile.py --parts accuracy --out "$OUT/fp8_profile_accuracy.json" \
    2>&1 | tail -40
on engine && timeout 100 python bench/text_engine_gpu.py --skip-checks --quantization fp8 --levels 64 \
    --kv-cache-dtype "${KV:-fp8}" \
    --out "$OUT/text_engine_fp8.json" > "$OUT/text_engine_fp8.log" 2>&1
on engine && grep -E '^\{|^warmup' "$OUT/text_engine_fp8.log" | cut -c1-400
