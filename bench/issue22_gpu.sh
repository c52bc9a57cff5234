#!/usr/bin/env bash
# Issue 22 on the GPU machine, one call (after the wheels prelude; carry .whl), sized for a session
# with about ten minutes of device time: the Triton row-quantize kernel against torch, text_bench
# with burst, single, sweep (64), prefix and fp8 beside bf16 on one server each, then FP8
# accuracy on the Llama-2-7B shape. TB (seconds, default 230) is text_bench's --time-budget.
set -o pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/card.txt
timeout 60 python - <<'PY' 2>&1 | tee $OUT/kernel_check.txt
import torch
from services.text import fp8, kernels
for shape in [(1, 4096), (64, 11008), (300, 4096)]:
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
    q, s = kernels.quantize_rows(x)
    q2, s2 = fp8.quantize_rows_torch(x)
    print(shape, "scale max rel", float(((s - s2).abs() / s2).max()),
          "q mismatch", float((q.float() != q2.float()).float().mean()))
print("unsupported_reason:", fp8.unsupported_reason(torch.device("cuda")))
PY
timeout $(( ${TB:-230} + 60 )) python bench/text_bench.py --git-commit "${COMMIT:-unknown}" \
    --scenarios burst,single,sweep,prefix,fp8 --levels 64 --fp8-levels 64 --burst-servers bf16 \
    --repeats 3 --prefix-repeats 3 --time-budget ${TB:-230} \
    --out $OUT/text_bench_fp8_prefix.json 2>&1 | tee $OUT/text_bench.log | tail -70
timeout 90 python bench/fp8_accuracy.py shape --out $OUT/fp8_accuracy_shape.json 2>&1 | tail -25
cat $OUT/fp8_accuracy_shape.json 2>/dev/null
