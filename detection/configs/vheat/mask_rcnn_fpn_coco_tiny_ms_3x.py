# Mask R-CNN + FPN with vHeat-T, COCO 3x multi-scale: the official run (published box AP 47.3, mask AP 42.5).
# mmdet's Swin-T ms-crop-3x config is the official one resolved: the Swin-T 1x config with the multi-scale and
# crop pipeline and 36 epochs (steps at 27 and 33). The official backbone keeps img_size 224 here: the 224 px
# frequency embeddings load as they are (and are resized on the fly to each batch, as at any size).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['detection.vheat'], allow_failed_imports=False)

pretrained = 'checkpoints/vHeat_tiny.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='vHeat',
        depths=[2, 2, 6, 2],
        dims=96,
        drop_path_rate=0.2,
        post_norm=False,
        layer_scale=None,
        img_size=224,
        freq_embed_resize='zero',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'downsample.norm': dict(decay_mult=1.0)}))  # see the 1x config
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
# checkpoints written before old ones are removed, atomically (classification/mm/hooks.py)
default_hooks = dict(checkpoint=dict(type='DurableCheckpointHook'))
