"""Downstream backbone adapters, configs and checkpoint conversion (fast; no training)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

OFFICIAL = os.path.join(FIXTURES, 'official_vheat_mini.pth')
MINI = dict(dims=16, depths=[1, 1, 2, 1], img_size=64, post_norm=False)


def _registries():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    import detection.vheat  # noqa: F401
    import segmentation.vheat  # noqa: F401
    return {'mmdet': DET, 'mmseg': SEG}


@pytest.mark.parametrize('library', ['mmdet', 'mmseg'])
def test_official_checkpoint_loads_through_init_cfg(library, official_checkpoint):
    backbone = _registries()[library].build(
        dict(type='vHeat', img_size=128, init_cfg=dict(type='Pretrained', checkpoint=OFFICIAL),
             **{k: v for k, v in MINI.items() if k != 'img_size'}))
    result = backbone.load_pretrained(OFFICIAL)
    assert sorted(result.missing_keys) == sorted(f'out_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    assert result.unexpected_keys == []
    backbone.init_weights()  # the init_cfg path
    official = official_checkpoint['model']
    assert torch.equal(backbone.stages[2].blocks[1].mlp.fc1.weight, official['layers.2.1.mlp.fc1.weight'].flatten(1))
    # frequency embeddings resized from 64 px (16x16) to the model's 128 px (32x32)
    assert backbone.stages[0].freq_embed.shape == (32, 32, 16)
    assert not hasattr(backbone, 'head')


def test_backbone_matches_classifier_features(official_checkpoint):
    """The stage outputs are the classifier's, before the output norms (which start as identity)."""
    from classification.models import vHeat
    from classification.models.backbone import vHeatBackbone
    classifier = vHeat(num_classes=10, **MINI).eval()
    classifier.load_state_dict(official_checkpoint['model'])
    backbone = vHeatBackbone(**MINI).eval()
    backbone.load_pretrained(OFFICIAL)
    x = torch.randn(1, 3, 72, 100)  # not a multiple of 32: mmdet pads to 32, other sizes still run
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, intermediates_only=True)
        outs = backbone(x)
    for i, (out, ref) in enumerate(zip(outs, expected)):
        assert out.shape == ref.shape and out.shape[1] == 16 * 2 ** i
        norm = torch.nn.functional.layer_norm(ref.permute(0, 2, 3, 1), (ref.shape[1],)).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, norm, atol=1e-4, rtol=1e-4)


def test_out_indices_and_frozen_stages():
    from classification.models.backbone import vHeatBackbone
    backbone = vHeatBackbone(out_indices=(1, 2), frozen_stages=1, **MINI)
    assert len(backbone.stages) == 3  # the last stage is dropped
    outs = backbone(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64]
    backbone.train()
    assert not backbone.stem.training and not backbone.stages[0].training and backbone.stages[1].training
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(('stem.', 'stages.0.')) for n in frozen)
    sum(o.sum() for o in backbone(torch.randn(2, 3, 64, 64))).backward()
    assert backbone.stem.conv1.weight.grad is None and backbone.stages[1].freq_embed.grad is not None


def test_configs_build_with_paper_sizes():
    """Every config builds with its library's MODELS; vHeat-T sizes are the published ones (53M, 62M)."""
    from mmengine.config import Config

    from tools.analysis_tools.downstream_complexity import build_model, count, default_configs
    configs = [p for p in default_configs() if os.path.relpath(p, ROOT).startswith(('detection', 'segmentation'))]
    assert len(configs) == 8
    sizes = {}
    for path in configs:
        cfg = Config.fromfile(path)
        assert cfg.model.backbone.type == 'vHeat' and cfg.model.backbone.init_cfg.type == 'Pretrained'
        sizes[os.path.basename(path)] = count(build_model(cfg))
    assert 52 < sizes['mask_rcnn_fpn_coco_tiny.py'] < 54
    assert 73 < sizes['mask_rcnn_fpn_coco_small.py'] < 75
    assert 114 < sizes['mask_rcnn_fpn_coco_base.py'] < 116
    assert 60 < sizes['upernet_vheat_160k_ade20k_512x512_tiny.py'] < 66  # published 62M; see README


# The official configs (MzeroMiko/vHeat, detection/configs/vheat and segmentation/configs/vheat) with their bases
# (the official copies of mmdet's Swin-T Mask R-CNN 1x and mmseg's Swin UperNet configs) resolved.
_DET_1X = dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05), batch=2, val_batch=2,
               schedule=[dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
                         dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)],
               max_epochs=12, multi_scale=False)
_DET_3X = dict(_DET_1X, max_epochs=36, multi_scale=True, schedule=[
    _DET_1X['schedule'][0], dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)])
_SEG = dict(optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01), batch=2, val_batch=1,
            schedule=[dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
                      dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)],
            max_iters=160000, test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
_T = dict(depths=[2, 2, 6, 2], dims=96, post_norm=False, layer_scale=None)
_S = dict(depths=[2, 2, 18, 2], dims=96, post_norm=True, layer_scale=1e-5)
_B = dict(depths=[2, 2, 18, 2], dims=128, post_norm=True, layer_scale=1e-5)
OFFICIAL_DOWNSTREAM = {
    'detection/configs/vheat/mask_rcnn_fpn_coco_tiny.py': (_DET_1X, dict(_T, drop_path_rate=0.1, img_size=512)),
    'detection/configs/vheat/mask_rcnn_fpn_coco_small.py': (_DET_1X, dict(_S, drop_path_rate=0.3, img_size=512)),
    'detection/configs/vheat/mask_rcnn_fpn_coco_base.py': (_DET_1X, dict(_B, drop_path_rate=0.5, img_size=512)),
    'detection/configs/vheat/mask_rcnn_fpn_coco_tiny_ms_3x.py': (_DET_3X, dict(_T, drop_path_rate=0.2, img_size=224)),
    'detection/configs/vheat/mask_rcnn_fpn_coco_small_ms_3x.py': (_DET_3X, dict(_S, drop_path_rate=0.4, img_size=512)),
    'segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_tiny.py': (_SEG, dict(_T, drop_path_rate=0.3, img_size=512)),
    'segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_small.py': (_SEG, dict(_S, drop_path_rate=0.4, img_size=512)),
    'segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_base.py': (_SEG, dict(_B, drop_path_rate=0.5, img_size=512)),
}


def _official_names(variant: str, depths) -> dict:
    """Our backbone parameter names -> the official ones (the official out norms are ``outnorm<i>``)."""
    import json

    from classification.models.vheat import rename_official_key
    layout = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))[variant]['state_dict_train_mode']
    names = {rename_official_key(k): k for k in layout if not k.startswith('classifier')}
    names.update({f'out_norms.{i}.{p}': f'outnorm{i}.{p}' for i in range(len(depths)) for p in ('weight', 'bias')})
    return names


@pytest.mark.parametrize('path', sorted(OFFICIAL_DOWNSTREAM))
def test_configs_resolve_to_the_official_recipe(path):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from classification.models.backbone import vHeatBackbone
    recipe, backbone = OFFICIAL_DOWNSTREAM[path]
    cfg = Config.fromfile(os.path.join(ROOT, path))
    for key, value in backbone.items():
        assert cfg.model.backbone[key] == value, key
    assert cfg.model.backbone.freq_embed_resize == 'zero' and cfg.model.backbone.out_indices == (0, 1, 2, 3)
    dims = [backbone['dims'] * 2 ** i for i in range(4)]
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert {k: cfg.optim_wrapper.optimizer[k] for k in recipe['optimizer']} == recipe['optimizer']
    assert [{k: v for k, v in s.items() if k != '_scope_'} for s in cfg.param_scheduler] == recipe['schedule']
    assert cfg.train_dataloader.batch_size == recipe['batch'] and cfg.val_dataloader.batch_size == recipe['val_batch']
    if path.startswith('detection'):
        assert cfg.train_cfg.max_epochs == recipe['max_epochs'] and cfg.model.neck.in_channels == dims
        resizes = [t for t in cfg.train_dataloader.dataset.pipeline if t['type'] in ('Resize', 'RandomChoice')]
        assert [t['type'] for t in resizes] == (['RandomChoice'] if recipe['multi_scale'] else ['Resize'])
    else:
        assert cfg.train_cfg.max_iters == recipe['max_iters'] and cfg.model.decode_head.in_channels == dims
        assert cfg.model.auxiliary_head.in_channels == dims[2]
        assert dict(cfg.model.test_cfg) == recipe['test_cfg']

    # weight decay: officially every parameter whose (official) name contains 'norm' is exempt, nothing else
    model = torch.nn.Module()
    model.backbone = vHeatBackbone(**{k: v for k, v in cfg.model.backbone.items() if k not in ('type', 'init_cfg')})
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper.to_dict())
    decay = {id(p): group['weight_decay'] for group in wrapper.optimizer.param_groups for p in group['params']}
    official = _official_names({96: 'vHeat_small', 128: 'vHeat_base'}[backbone['dims']] if backbone['post_norm']
                               else 'vHeat_tiny', backbone['depths'])
    for name, param in model.backbone.named_parameters():
        expected = 0.0 if 'norm' in official[name] else recipe['optimizer']['weight_decay']
        assert decay[id(param)] == expected, (name, official[name])


def _official_checkpoint_224(tmp_path):
    """An official-format vHeat-T checkpoint at 224 px (the layout's keys and shapes, random values)."""
    import json
    layout = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))['vHeat_tiny']
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in layout['state_dict_train_mode'].items()}
    path = tmp_path / 'vHeat_tiny_official.pth'
    torch.save({'model': state}, path)
    return str(path), state


@pytest.mark.parametrize('resize', ['zero', 'bicubic'])
def test_detection_backbone_initialisation_from_224_checkpoint(tmp_path, resize):
    """vHeat-T Mask R-CNN backbone (img_size 512) through init_cfg: the official initialisation zero-pads the
    224 px frequency embeddings (top-left is the checkpoint, the rest exactly zero); 'bicubic' stretches them."""
    from mmengine.config import Config
    checkpoint, state = _official_checkpoint_224(tmp_path)
    cfg = Config.fromfile(os.path.join(ROOT, 'detection/configs/vheat/mask_rcnn_fpn_coco_tiny.py'))
    backbone_cfg = cfg.model.backbone.to_dict()
    backbone_cfg['init_cfg']['checkpoint'] = checkpoint
    if resize == 'bicubic':
        backbone_cfg['freq_embed_resize'] = 'bicubic'
    backbone = _registries()['mmdet'].build(backbone_cfg)
    backbone.init_weights()
    for i, side in enumerate([56, 28, 14, 7]):
        source, loaded = state[f'freq_embed.{i}'], backbone.stages[i].freq_embed.detach()
        assert loaded.shape == (128 // 2 ** i, 128 // 2 ** i, 96 * 2 ** i)
        if resize == 'zero':
            assert torch.equal(loaded[:side, :side], source)
            assert not loaded[side:].any() and not loaded[:, side:].any()
        else:
            expected = torch.nn.functional.interpolate(source.permute(2, 0, 1)[None], size=loaded.shape[:2],
                                                       mode='bicubic', align_corners=False)[0].permute(1, 2, 0)
            torch.testing.assert_close(loaded, expected)
    assert torch.equal(backbone.stages[2].blocks[5].op.to_k[0].weight, state['layers.2.5.op.to_k.0.weight'])


@pytest.mark.parametrize('mode', ['zero', 'bicubic'])
def test_interpolate4downstream(tmp_path, mode, official_checkpoint):
    out = tmp_path / 'mini_128.pth'
    subprocess.run([sys.executable, os.path.join(ROOT, 'classification/interpolate4downstream.py'),
                    '--pt_pth', OFFICIAL, '--pt_size', '64', '--tg_pth', str(out), '--tg_size', '128',
                    '--mode', mode], check=True, cwd=ROOT)
    state_dict = torch.load(out, weights_only=True)['model']
    source = official_checkpoint['model']['freq_embed.0']
    assert state_dict['freq_embed.0'].shape == (32, 32, 16)
    if mode == 'zero':
        assert torch.equal(state_dict['freq_embed.0'][:16, :16], source)
        assert not state_dict['freq_embed.0'][16:].any()
    from classification.models.backbone import vHeatBackbone
    result = vHeatBackbone(**dict(MINI, img_size=128)).load_pretrained(str(out))
    assert result.unexpected_keys == [] and all(k.startswith('out_norms') for k in result.missing_keys)


def test_train_flags_have_mmdets_meanings():
    """tools/train.py: --resume alone (the work dir's last checkpoint) and with a path, --auto-scale-lr; --amp
    without CUDA is one line saying it needs a GPU."""
    from mmengine.config import Config

    from classification.core.errors import UsageError
    from tools import train
    cfg = Config.fromfile(os.path.join(ROOT, 'detection', 'configs', 'vheat', 'mask_rcnn_fpn_coco_tiny.py'))
    train.apply_args(cfg, train.parse_args(['x.py', '--resume', '--auto-scale-lr']))
    assert (cfg.resume, cfg.load_from, cfg.auto_scale_lr.enable, cfg.auto_scale_lr.base_batch_size) == \
        (True, None, True, 16)
    train.apply_args(cfg, train.parse_args(['x.py', '--resume', 'epoch_12.pth']))
    assert (cfg.resume, cfg.load_from) == (True, 'epoch_12.pth')
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match='--amp: .* needs a CUDA GPU'):
            train.apply_args(cfg, train.parse_args(['x.py', '--amp']))
    segmentation = Config.fromfile(os.path.join(ROOT, 'segmentation', 'configs', 'vheat',
                                                'upernet_vheat_160k_ade20k_512x512_tiny.py'))
    with pytest.raises(UsageError, match='--auto-scale-lr: .* sets no auto_scale_lr.base_batch_size'):
        train.apply_args(segmentation, train.parse_args(['x.py', '--auto-scale-lr']))


def test_downstream_flops_count_the_dct_that_mmengines_counter_drops(tmp_path):
    """tools/analysis_tools/downstream_complexity.py's pass on a tiny Mask R-CNN: the project's count exceeds mmengine's
    by exactly the DCT products' batch dimensions, which its matmul handle drops: the W-axis product of each 2-D DCT
    multiplies W x W matrices over H x C columns, counted (H - 1) x W^2 x C too low, twice a block (the transform and
    its inverse). The published sizes are what the tool counts at."""
    from mmengine.config import Config

    from classification.data import shapes as shapes_dataset
    from tools.analysis_tools.downstream_complexity import build_model, flops, input_shape
    config = shapes_dataset.detection_config(str(tmp_path / 'config.py'), str(tmp_path), max_iters=1, size=64)
    model = build_model(Config.fromfile(config)).eval()
    assert input_shape(model) == (1280, 800)
    height, width = 256, 160
    counted = flops(model, (height, width), proposals=8, masks=2)
    dims, depths = shapes_dataset.TINY_BACKBONE['dims'], shapes_dataset.TINY_BACKBONE['depths']
    dropped = sum(2 * depth * (height // 2 ** (i + 2) - 1) * (width // 2 ** (i + 2)) ** 2 * dims * 2 ** i
                  for i, depth in enumerate(depths))
    assert dropped > 0 and round((counted['gflops'] - counted['gflops_mmengine']) * 1e9) == dropped
