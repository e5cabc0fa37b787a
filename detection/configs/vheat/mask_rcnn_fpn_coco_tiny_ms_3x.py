# Mask R-CNN + FPN with vHeat-T, COCO 3x multi-scale (paper: box AP 47.3, mask AP 42.5).
# Multi-scale/crop pipeline and 36-epoch schedule from mmdet's Swin-T ms-crop-3x config, backbone from the 1x one.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['detection.vheat'], allow_failed_imports=False)

pretrained = 'checkpoints/vHeat_tiny.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vHeat',
        depths=[2, 2, 6, 2],
        dims=96,
        drop_path_rate=0.1,
        post_norm=False,
        layer_scale=None,
        img_size=512,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'freq_embed': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
