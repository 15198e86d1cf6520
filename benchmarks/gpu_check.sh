#!/usr/bin/env bash
# The GPU figures in one command, in about 5 to 8 minutes on one data-centre GPU:
#   1. training images/s at batch 64, 256 and 1024 with --precision bf16 and --compile cudagraphs
#      (and fp32 and tf32 beside them), with the minutes the standard budget (300,000 steps) would take,
#      and FactorVAE's step (dlib-factor) in fp32, tf32 and bf16;
#   2. K = 8 models trained at once against one by one (images/s, peak memory);
#   3. the full-protocol evaluation of a dSprites model on the GPU (betavae evaluate): wall time,
#      encoding seconds and each metric's seconds.
# Run from the repository root with betavae installed (make install); it needs CUDA.
#     bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"

"$PY" - <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("benchmarks/gpu_check.sh needs a CUDA GPU; torch sees none.")
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo; echo "== 1. training throughput (betavae's step against plain PyTorch loops) =="
for compile in off cudagraphs; do
    "$PY" benchmarks/train_throughput.py --device cuda --batch-sizes 64,256,1024 --precision bf16 \
        --compile "$compile" --rounds 3 --images-per-run 65536
done
"$PY" benchmarks/train_throughput.py --device cuda --batch-sizes 64,256,1024 --precision fp32,tf32 --rounds 3 \
    --images-per-run 65536
# FactorVAE's step (dlib-factor: the discriminator's six 1,000-unit layers beside the VAE) in each arithmetic
"$PY" benchmarks/train_throughput.py --device cuda --recipe dlib-factor --batch-sizes 64 --precision fp32,tf32,bf16 \
    --rounds 3 --images-per-run 65536

echo; echo "== 2. K models at once =="
"$PY" benchmarks/parallel_models.py --device cuda --models 8 --steps 200 --rounds 3

echo; echo "== 3. full-protocol evaluation on the GPU =="
"$PY" -m betavae reference --copy dsprites-fast-cpu "$OUT/fast-cpu" >/dev/null
start=$(date +%s.%N)
"$PY" -m betavae evaluate "$OUT/fast-cpu" --device cuda
end=$(date +%s.%N)
"$PY" - "$OUT/fast-cpu/evaluation.json" "$start" "$end" <<'EOF'
import json, sys
record = json.load(open(sys.argv[1]))
print(f"\nwhole command: {float(sys.argv[3]) - float(sys.argv[2]):.1f} s wall on {record['device']}; "
      f"encoding {record['encode_seconds']:.1f} s for {record['images_encoded']:,} distinct images")
for name, entry in record["metrics"].items():
    print(f"  {name:26s}{entry['seconds']:8.1f} s")
EOF
