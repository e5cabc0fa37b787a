#!/usr/bin/env bash
# Train / evaluate / time vHeat-T, -S and -B on ImageNet-1K as in the paper (8 GPUs, batch 128 each = 1024).
#   bash modelcard.sh tiny|small|base train|eval|throughput
# DATA (default /dataset/ImageNet2012, with train/ and val/), OUTPUT (default /tmp) and CKPT_DIR (where the
# released vHeat_tiny.pth, vHeat_small.pth, vHeat_base.pth are; default .) override the paths.
# Published ImageNet-1K top-1: vHeat-T 82.2, vHeat-S 83.6, vHeat-B 83.9.
set -euo pipefail
cd "$(dirname "$0")"
size=${1:?usage: modelcard.sh tiny|small|base train|eval|throughput}
action=${2:?usage: modelcard.sh tiny|small|base train|eval|throughput}
case "$size" in tiny|small|base) ;; *) echo "unknown model size: $size" >&2; exit 2 ;; esac
data=${DATA:-/dataset/ImageNet2012}
output=${OUTPUT:-/tmp}
cfg=classification/configs/vHeat/vHeat_${size}_224.yaml
launch=(python -m torch.distributed.launch --nnodes=1 --node_rank=0 --nproc_per_node=8
        --master_addr="127.0.0.1" --master_port=29501)
case "$action" in
  train)
    set -x
    "${launch[@]}" classification/main.py --cfg "$cfg" --batch-size 128 --data-path "$data" --output "$output" ;;
  eval)
    set -x
    "${launch[@]}" classification/main.py --cfg "$cfg" --batch-size 128 --data-path "$data" --output "$output" \
      --eval --resume "${CKPT_DIR:-.}/vHeat_${size}.pth" --model_ema False ;;
  throughput)
    set -x
    python classification/main.py --cfg "$cfg" --batch-size 128 --data-path "$data" --output "$output" \
      --throughput --resume "${CKPT_DIR:-.}/vHeat_${size}.pth" ;;
  *) echo "unknown action: $action (train, eval or throughput)" >&2; exit 2 ;;
esac
