#!/usr/bin/env bash
# The GPU check: everything only a GPU can show, in one go, in about 5 minutes on one
# modern GPU. A maintainer with a GPU runs it once and puts its output in docs/GPU.md.
#
#   bash scripts/gpu_check.sh DATA_DIR     # CIFAR-10 as train.py's --data-dir takes it
#   bash scripts/gpu_check.sh              # downloads CIFAR-10 into data/ (train.py --download)
#
# Stages: the tests that take a device, on CUDA; the assignment recipe for 2 epochs eager,
# with --compile, and under torchrun; the strong recipe for 1 epoch with its AutoAugment
# drawn on the GPU and in DataLoader workers; the attention kernel that trains (profiler); the
# benchmark on CUDA. Every stage runs even after one fails, and none is skipped: the
# summary at the end names each stage's verdict and the script exits 1 if any failed.
# Everything it writes goes to runs/gpu-check/ (GPU_CHECK_OUT), replaced on each run.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${GPU_CHECK_OUT:-runs/gpu-check}
export PYTHONUNBUFFERED=1

"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: torch sees no CUDA device; this check needs one')" || exit 1
rm -rf "$out" && mkdir -p "$out"
if [ $# -ge 1 ]; then data=(--data-dir "$1"); else data=(--data-dir data --download); fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$out/gpu.txt"

stage() {  # stage NAME COMMAND...: run it, its output also in $out/NAME.log, and record the verdict
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" 2>&1 | tee "$out/$name.log"; then
    echo "$name ok" >>"$out/stages.txt"
  else
    echo "$name FAILED" >>"$out/stages.txt"
  fi
  echo "== $name took $((SECONDS - start)) s"
}

train=(train.py --epochs 2 "${data[@]}" --no-progress)
stage tests env VIT_CIFAR_TEST_DEVICE=cuda "$python" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_device_policy.py
stage eager "$python" "${train[@]}" --out "$out/eager"
stage compiled "$python" "${train[@]}" --compile --out "$out/compiled"
stage torchrun "$python" -m torch.distributed.run --standalone --nproc_per_node=1 "${train[@]}" --out "$out/torchrun"
strong=(train.py --recipe strong --epochs 1 "${data[@]}" --no-progress)
stage policy-device "$python" "${strong[@]}" --policy-on device --out "$out/policy-device"
stage policy-workers "$python" "${strong[@]}" --policy-on workers --out "$out/policy-workers"
stage attention "$python" -m tools.attention_kernels --device cuda --json "$out/attention.json"
stage bench "$python" -m tools.bench --device cuda --steps 100 --json "$out/bench.json"
echo "== summary"
"$python" -m tools.gpu_summary "$out"
