# UperNet with vHeat-S, ADE20K 512x512, 160k iterations: the official run (published mIoU 49.0).
_base_ = ['./upernet_vheat_160k_ade20k_512x512_tiny.py']

pretrained = 'checkpoints/vHeat_small.pth'
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.4, post_norm=True, layer_scale=1e-5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
