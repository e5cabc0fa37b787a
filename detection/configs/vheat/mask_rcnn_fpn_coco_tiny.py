# Mask R-CNN + FPN with vHeat-T, COCO 1x (paper: box AP 45.1, mask AP 41.2). 16 images per batch: 8 GPUs x 2.
# Schedule, AdamW (lr 1e-4, wd 0.05) and data pipeline come from mmdet's Swin-T 1x config.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['detection.vheat'], allow_failed_imports=False)

pretrained = 'checkpoints/vHeat_tiny.pth'  # official or own classification checkpoint (224 px)
model = dict(
    backbone=dict(
        _delete_=True,
        type='vHeat',
        depths=[2, 2, 6, 2],
        dims=96,
        drop_path_rate=0.1,
        post_norm=False,
        layer_scale=None,
        img_size=512,  # frequency embeddings resized bicubically from 224 to 512 on load, and on the fly to each batch
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'freq_embed': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
