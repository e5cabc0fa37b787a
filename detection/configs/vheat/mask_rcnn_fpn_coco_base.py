# Mask R-CNN + FPN with vHeat-B, COCO 1x: the official run (published box AP 47.7, mask AP 43.0).
_base_ = ['./mask_rcnn_fpn_coco_tiny.py']

pretrained = 'checkpoints/vHeat_base.pth'
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], dims=128, drop_path_rate=0.5, post_norm=True, layer_scale=1e-5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
