# UperNet with vHeat-T, ADE20K 512x512, 160k iterations: the official run (published mIoU 47.0).
# Everything but the backbone comes from mmseg's Swin-T UperNet config, as officially: AdamW lr 6e-5, weight decay
# 0.01 except on parameters named '*norm*', 1500 warm-up iterations then poly decay, 8 GPUs x 2 images, and
# sliding-window testing (512x512 crops, stride 341).
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['segmentation.vheat'], allow_failed_imports=False)

crop_size = (512, 512)
pretrained = 'checkpoints/vHeat_tiny.pth'  # a 224 px classification checkpoint, official or ours
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='vHeat',
        depths=[2, 2, 6, 2],
        dims=96,
        drop_path_rate=0.3,
        post_norm=False,
        layer_scale=None,
        img_size=512,
        # official initialisation (interpolate4downstream.py): the 224 px frequency embeddings zero-padded to
        # 512 px; 'bicubic' stretches them instead (an option, not the paper's runs)
        freq_embed_resize='zero',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# The base exempts parameters whose name contains 'norm' from weight decay. The official downsampling LayerNorms
# are named 'layers.<i>.<depth>.1' and so were decayed; ours are 'downsample.norm': decay them too.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'downsample.norm': dict(decay_mult=1.0)}))
# checkpoints written before old ones are removed, atomically (classification/mm/hooks.py)
default_hooks = dict(checkpoint=dict(type='DurableCheckpointHook'))
