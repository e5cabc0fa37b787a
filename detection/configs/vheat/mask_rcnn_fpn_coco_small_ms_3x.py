# Mask R-CNN + FPN with vHeat-S, COCO 3x multi-scale: the official run (published box AP 48.8, mask AP 43.7).
_base_ = ['./mask_rcnn_fpn_coco_tiny_ms_3x.py']

pretrained = 'checkpoints/vHeat_small.pth'
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.4, post_norm=True, layer_scale=1e-5, img_size=512,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
