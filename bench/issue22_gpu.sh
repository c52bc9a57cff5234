#!/usr/bin/env bash
# Issue 22 on the GPU machine, one call (after the wheels prelude; carry .whl): the Triton row-quantize kernel against torch,
# FP8 accuracy on the Llama-2-7B shape, and text_bench with burst, single, sweep, prefix and fp8 beside bf16.
# Not yet run: no GPU machine started in the session that wrote it.
set -o pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 60 python - <<'PY' 2>&1 | tee $OUT/kernel_check.txt
import torch
from services.text import fp8, kernels
for shape in [(1,4096),(64,11008),(300,4096)]:
    x=torch.randn(shape,device='cuda',dtype=torch.bfloat16)*3
    q,s=kernels.quantize_rows(x); q2,s2=fp8.quantize_rows_torch(x)
    print(shape,'scale max rel',float(((s-s2).abs()/s2).max()),'q mismatch',float((q.float()!=q2.float()).float().mean()))
print(fp8.unsupported_reason(torch.device('cuda')))
PY
timeout 120 python bench/fp8_accuracy.py shape --out $OUT/fp8_accuracy_shape.json 2>&1 | tail -25
timeout 330 python bench/text_bench.py --git-commit "${COMMIT:-unknown}" --scenarios burst,single,sweep,prefix,fp8 --levels 16,64 --repeats 3 --time-budget 300 --out $OUT/text_bench_fp8_prefix.json 2>&1 | tee $OUT/text_bench.log | tail -60
