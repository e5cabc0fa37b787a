# UperNet with vHeat-T, ADE20K 512x512, 160k iterations (paper: mIoU 46.9). 16 images per batch: 8 GPUs x 2.
# Data pipeline, TTA pipeline, UperNet heads and 160k poly schedule come from mmseg's Swin-T config.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['segmentation.vheat'], allow_failed_imports=False)

pretrained = 'checkpoints/vHeat_tiny.pth'  # official or own classification checkpoint (224 px)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='vHeat',
        depths=[2, 2, 6, 2],
        dims=96,
        drop_path_rate=0.1,
        post_norm=False,
        layer_scale=None,
        img_size=512,  # frequency embeddings resized bicubically from 224 to the 512 crop when loaded
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# AdamW lr 1e-4, weight decay 0.05 (as the issue asks); no decay on norms and frequency embeddings.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'freq_embed': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
