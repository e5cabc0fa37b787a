#!/usr/bin/env bash
# The paper's runs of vHeat-T, -S and -B, as the official model card has them:
#   bash modelcard.sh tiny|small|base train|eval|throughput      ImageNet-1K: 16 GPUs x 128 images (2048, lr 2e-3)
#     GPUS=8 (or 4, 2, 1) keeps the total batch of 2048 with 16/GPUS accumulation steps, so the same learning rate
#   bash modelcard.sh tiny|small|base slurm                        the same run submitted to SLURM: 2 nodes x 8 GPUs,
#     warned 120 s before the time limit (USR1), requeued and resumed where it stopped (PARTITION, default gpu;
#     TIME, default 3-00:00:00; CPUS_PER_TASK, default 10)
#   bash modelcard.sh tiny|small|base det_train|det_test           Mask R-CNN 1x on COCO
#   bash modelcard.sh tiny|small det3x_train|det3x_test            Mask R-CNN 3x multi-scale on COCO
#   bash modelcard.sh tiny|small|base seg_train|seg_test           UperNet 160k on ADE20K (seg_test adds --tta)
# Downstream (8 GPUs x 2 images, as officially) configs read data/coco and data/ade (see README, Downstream) and
# write work_dirs/<config name>/.
# DATA (default /dataset/ImageNet2012, with train/ and val/), OUTPUT (default /tmp) and CKPT_DIR (where the
# released vHeat_tiny.pth, vHeat_small.pth, vHeat_base.pth are; default .) override the paths.
# Published ImageNet-1K top-1: vHeat-T 82.2, vHeat-S 83.6, vHeat-B 83.9.
set -euo pipefail
cd "$(dirname "$0")"
. tools/common.sh
ACTIONS="train|eval|throughput|slurm|det_train|det_test|det3x_train|det3x_test|seg_train|seg_test"
[ $# -eq 2 ] || die "usage: modelcard.sh tiny|small|base $ACTIONS"
size=$1
action=$2
case "$size" in tiny|small|base) ;; *) die "unknown model size '$size' (tiny, small or base)" ;; esac
data=${DATA:-/dataset/ImageNet2012}
output=${OUTPUT:-/tmp}
cfg=classification/configs/vHeat/vHeat_${size}_224.yaml
gpus=${GPUS:-16}
case "$gpus" in 1|2|4|8|16) ;; *) die "GPUS must divide 16 (the official 16 x 128 images), got '$gpus'" ;; esac
launch=(torchrun --nnodes=1 --nproc_per_node="$gpus" --master_addr="127.0.0.1" --master_port=29501)
case "$action" in
  train)
    set -x
    "${launch[@]}" classification/main.py --cfg "$cfg" --batch-size 128 --accumulation-steps $((16 / gpus)) \
      --data-path "$data" --output "$output" ;;
  eval)
    set -x
    "${launch[@]}" classification/main.py --cfg "$cfg" --batch-size 128 --data-path "$data" --output "$output" \
      --eval --resume "${CKPT_DIR:-.}/vHeat_${size}.pth" --model_ema False ;;
  slurm)
    set -x
    GPUS=16 GPUS_PER_NODE=8 CPUS_PER_TASK=${CPUS_PER_TASK:-10} sbatch --job-name="vheat_${size}" \
      --partition="${PARTITION:-gpu}" --nodes=2 --ntasks-per-node=8 --gres=gpu:8 \
      --cpus-per-task="${CPUS_PER_TASK:-10}" --time="${TIME:-3-00:00:00}" --signal=B:USR1@120 --requeue \
      --open-mode=append --output="${output}/vheat_${size}_slurm_%j.log" \
      tools/slurm_train.sh "${PARTITION:-gpu}" "vheat_${size}" "$cfg" "$output" --batch-size 128 --data-path "$data" ;;
  throughput)
    set -x
    python classification/main.py --cfg "$cfg" --batch-size 128 --data-path "$data" --output "$output" \
      --throughput --resume "${CKPT_DIR:-.}/vHeat_${size}.pth" ;;
  det_train|det3x_train)
    schedule=$([ "$action" = det3x_train ] && echo _ms_3x || true)
    set -x
    bash tools/dist_train.sh "detection/configs/vheat/mask_rcnn_fpn_coco_${size}${schedule}.py" 8 ;;
  det_test|det3x_test)
    schedule=$([ "$action" = det3x_test ] && echo _ms_3x || true)
    epochs=$([ "$action" = det3x_test ] && echo 36 || echo 12)
    config=mask_rcnn_fpn_coco_${size}${schedule}
    set -x
    bash tools/dist_test.sh "detection/configs/vheat/${config}.py" "work_dirs/${config}/epoch_${epochs}.pth" 8 ;;
  seg_train)
    set -x
    bash tools/dist_train.sh "segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_${size}.py" 8 ;;
  seg_test)
    config=upernet_vheat_160k_ade20k_512x512_${size}
    set -x
    bash tools/dist_test.sh "segmentation/configs/vheat/${config}.py" "work_dirs/${config}/iter_160000.pth" 8
    bash tools/dist_test.sh "segmentation/configs/vheat/${config}.py" "work_dirs/${config}/iter_160000.pth" 8 --tta ;;
  *) die "unknown action '$action' ($ACTIONS)" ;;
esac
