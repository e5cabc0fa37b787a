"""Downstream backbone adapters, configs and checkpoint conversion (fast; no training)."""
import glob
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
    import detection.vheat  # noqa: F401
    import segmentation.vheat  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
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
    """Every config builds with its library's MODELS; vHeat-T sizes are the paper's (~53M and ~62M)."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from count_downstream_params import build_model, count
    from mmengine.config import Config
    configs = sorted(glob.glob(os.path.join(ROOT, 'detection/configs/vheat/*.py')) +
                     glob.glob(os.path.join(ROOT, 'segmentation/configs/vheat/*.py')))
    assert len(configs) == 8
    sizes = {}
    for path in configs:
        cfg = Config.fromfile(path)
        assert cfg.model.backbone.type == 'vHeat' and cfg.model.backbone.init_cfg.type == 'Pretrained'
        assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
        sizes[os.path.basename(path)] = count(build_model(cfg))
    assert 52 < sizes['mask_rcnn_fpn_coco_tiny.py'] < 54
    assert 73 < sizes['mask_rcnn_fpn_coco_small.py'] < 75
    assert 114 < sizes['mask_rcnn_fpn_coco_base.py'] < 116
    assert 60 < sizes['upernet_vheat_160k_ade20k_512x512_tiny.py'] < 66  # paper 62M; see README


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
