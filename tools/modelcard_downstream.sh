#!/usr/bin/env bash
# Detection and segmentation commands of the model card (to be merged into modelcard.sh).
# Run from the repository root after tools/install.sh; GPUS defaults to 8; checkpoints/ holds vHeat_*.pth.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${GPUS:-8}
# parameter counts of every downstream model
.venv/bin/python tools/count_downstream_params.py
for size in tiny small base; do
  bash tools/dist_train.sh detection/configs/vheat/mask_rcnn_fpn_coco_${size}.py "$GPUS"
  bash tools/dist_test.sh detection/configs/vheat/mask_rcnn_fpn_coco_${size}.py \
    work_dirs/mask_rcnn_fpn_coco_${size}/epoch_12.pth "$GPUS"
done
for size in tiny small; do
  bash tools/dist_train.sh detection/configs/vheat/mask_rcnn_fpn_coco_${size}_ms_3x.py "$GPUS"
  bash tools/dist_test.sh detection/configs/vheat/mask_rcnn_fpn_coco_${size}_ms_3x.py \
    work_dirs/mask_rcnn_fpn_coco_${size}_ms_3x/epoch_36.pth "$GPUS"
done
for size in tiny small base; do
  config=segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_${size}.py
  bash tools/dist_train.sh "$config" "$GPUS"
  bash tools/dist_test.sh "$config" work_dirs/upernet_vheat_160k_ade20k_512x512_${size}/iter_160000.pth "$GPUS"
  bash tools/dist_test.sh "$config" work_dirs/upernet_vheat_160k_ade20k_512x512_${size}/iter_160000.pth "$GPUS" --tta
done
