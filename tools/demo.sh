#!/usr/bin/env bash
# The README's first command: set up (core stack), write scikit-learn's digits as an ImageFolder under
# data/digits, train a small vHeat on it on the CPU, then evaluate its best checkpoint (model and EMA).
# Extra arguments go to the training command, e.g. `bash tools/demo.sh --opts TRAIN.EPOCHS 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh --core
py="${VHEAT_VENV:-.venv}/bin/python"
cfg=classification/configs/vHeat/vHeat_digits.yaml
out=output/demo
[ -d data/digits/val ] || "$py" classification/data/make_digits.py data/digits
rm -rf "$out/vHeat_digits/default"   # a fresh run each time (otherwise it would auto-resume the finished one)
"$py" classification/main.py --cfg "$cfg" --data-path data/digits --output "$out" "$@"
"$py" classification/main.py --cfg "$cfg" --data-path data/digits --output "$out" --tag eval \
  --eval --resume "$out/vHeat_digits/default/ckpt_best.pth" --model_ema True
