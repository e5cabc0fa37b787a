# UperNet with vHeat-B, ADE20K 512x512, 160k iterations: the official run (published mIoU 49.6).
_base_ = ['./upernet_vheat_160k_ade20k_512x512_tiny.py']

pretrained = 'checkpoints/vHeat_base.pth'
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], dims=128, drop_path_rate=0.5, post_norm=True, layer_scale=1e-5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
