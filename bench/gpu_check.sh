#!/usr/bin/env bash
# GPU check of the learning stage (issue 21): compress the zoo's ResNet-50-size model with
# --device cuda for a few hundred steps and print images/s, GPU memory and the gate's result.
# Designed for one GPU in under 10 minutes. NOT RUN in the task that wrote it (no GPU was lent).
#   bash bench/gpu_check.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
python -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q --upgrade pip
pip install -q torch --index-url https://download.pytorch.org/whl/cu124   # a CUDA build of PyTorch
pip install -q -e '.[images]' pillow
python - <<'PY'
import torch
assert torch.cuda.is_available(), "PyTorch sees no CUDA device"
print("cuda:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
# 2560 generated JPEGs, ResNet-50-size model (models/zoo.py), 224x224
python bench/scale.py --help >/dev/null
python - <<'PY'
import sys; sys.path.insert(0, "bench"); sys.path.insert(0, ".")
import scale
scale.model_path("resnet50"); scale.jpeg_folder(2560)
PY
OUT=bench/out/scale/gpu; mkdir -p "$OUT"
# 2560 images / batch 64 = 40 steps per epoch: 4 search + 4 fine-tune epochs = 320 steps
/usr/bin/time -v python -m smof_onnx compress bench/out/scale/resnet50.onnx -o "$OUT/r50.onnx" --report "$OUT/r50.json" \
  --data bench/out/scale/jpeg_2560 --labels-from-folders --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
  --device cuda --amp --workers 8 --batch-size 64 --epochs 4 --finetune-epochs 4 --val-split 0.1 \
  --target-flops 0.5 --no-latency 2> "$OUT/stderr.txt" || { tail -40 "$OUT/stderr.txt"; exit 1; }
python - "$OUT/r50.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); m = r["method"]
steps = (m["search_epochs"] + m["finetune_epochs"]) * -(-m["train_samples"] // m["batch_size"])
print("runtime:", m.get("runtime"), "distributed:", m.get("distributed"))
print(f"steps {steps}, method {m['seconds']} s, images/s {steps * m['batch_size'] / m['seconds']:.1f}")
print("memory:", m.get("memory"))
print("gate: max rel err", r["verify"]["max_rel_err"], "FLOPs ratio", r["flops"]["ratio"], "target met", r.get("target_met"))
PY
grep -E "Maximum resident|Elapsed" "$OUT/stderr.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
