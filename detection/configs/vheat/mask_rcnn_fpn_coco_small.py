# Mask R-CNN + FPN with vHeat-S, COCO 1x: the official run (published box AP 46.8, mask AP 42.3).
_base_ = ['./mask_rcnn_fpn_coco_tiny.py']

pretrained = 'checkpoints/vHeat_small.pth'
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3, post_norm=True, layer_scale=1e-5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
