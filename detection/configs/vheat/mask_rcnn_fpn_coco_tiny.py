# Mask R-CNN + FPN with vHeat-T, COCO 1x: the official run (published box AP 45.1, mask AP 41.2).
# Everything but the backbone comes from mmdet's Swin-T 1x config, as officially: AdamW lr 1e-4, weight decay 0.05
# except on parameters named '*norm*', 12 epochs (steps at 8 and 11, 1000 warm-up iterations), 8 GPUs x 2 images.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['detection.vheat'], allow_failed_imports=False)

pretrained = 'checkpoints/vHeat_tiny.pth'  # a 224 px classification checkpoint, official or ours
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
        # official initialisation (interpolate4downstream.py): the 224 px frequency embeddings zero-padded to
        # 512 px; 'bicubic' stretches them instead (an option, not the paper's runs)
        freq_embed_resize='zero',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The base exempts parameters whose name contains 'norm' from weight decay. The official downsampling LayerNorms
# are named 'layers.<i>.<depth>.1' and so were decayed; ours are 'downsample.norm': decay them too.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'downsample.norm': dict(decay_mult=1.0)}))
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
# checkpoints written before old ones are removed, atomically (classification/mm/hooks.py)
default_hooks = dict(checkpoint=dict(type='DurableCheckpointHook'))
