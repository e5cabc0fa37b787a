"""vHeat against the official implementation's outputs, layouts, counts; resolutions, features, gradients."""
import json
import os

import pytest
import timm
import torch

from classification.models import chunked, vHeat
from classification.models import vheat as vheat_module
from classification.models.vheat import linear_residual
from classification.models.flops import flop_count, param_count

from conftest import FIXTURES

LAYOUT = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))
VARIANTS = {'vHeat_tiny': 'vheat_tiny', 'vHeat_small': 'vheat_small', 'vHeat_base': 'vheat_base'}


def _official_model(official_io, official_checkpoint, **kwargs):
    model = vHeat(**official_io['kwargs'], **kwargs)
    model.load_state_dict(official_checkpoint['model'], strict=True)
    return model.eval()


@torch.no_grad()
def test_official_checkpoint_gives_official_logits(official_io, official_checkpoint):
    model = _official_model(official_io, official_checkpoint)
    assert (model(official_io['input']) - official_io['logits']).abs().max() <= 1e-4
    model.infer_init()
    assert not any('freq_embed' in k or 'to_k' in k for k in model.state_dict())
    assert (model(official_io['input']) - official_io['logits_infer']).abs().max() <= 1e-4


@torch.no_grad()
def test_training_layout_weights_load_into_inference_model(official_io, official_checkpoint):
    model = _official_model(official_io, official_checkpoint, infer_mode=True)
    assert (model(official_io['input']) - official_io['logits_infer']).abs().max() <= 1e-4
    # and the result differs from a model whose weights were not loaded
    fresh = vHeat(**official_io['kwargs'], infer_mode=True).eval()
    assert (fresh(official_io['input']) - official_io['logits_infer']).abs().max() > 1e-2


@torch.no_grad()
def test_own_inference_state_dict_round_trips(official_io, official_checkpoint):
    model = _official_model(official_io, official_checkpoint)
    model.infer_init()
    clone = vHeat(**official_io['kwargs'], infer_mode=True).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(clone(official_io['input']), model(official_io['input']))


def test_inference_checkpoint_into_training_model_is_refused(official_io, official_checkpoint):
    model = _official_model(official_io, official_checkpoint)
    model.infer_init()
    with pytest.raises(ValueError, match='infer_mode=True'):
        vHeat(**official_io['kwargs']).load_state_dict(model.state_dict())


@pytest.mark.parametrize('name', list(VARIANTS))
def test_official_layouts_load_strictly(name):
    """Every official key and shape (training and infer_init layouts) maps onto our T/S/B."""
    ref = LAYOUT[name]
    for infer_mode, layout in ((False, ref['state_dict_train_mode']), (True, ref['state_dict_deploy_mode'])):
        model = vHeat(**ref['constructor'], infer_mode=infer_mode)
        state = {k: torch.zeros(shape) for k, shape in layout.items()}
        model.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped key
        assert len(model.state_dict()) == len(layout)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_published_params_and_flops(name):
    ref = LAYOUT[name]
    model = timm.create_model(VARIANTS[name])
    assert param_count(model) == ref['params_train_mode']
    model.infer_init()
    params = param_count(model)
    assert abs(params - ref['params_deploy_mode_all']) <= 0.005 * ref['params_deploy_mode_all']
    flops = flop_count(model, (1, 3, 224, 224))
    assert abs(flops - ref['fvcore_flops_deploy_224']) <= 0.02 * ref['fvcore_flops_deploy_224']


@torch.no_grad()
def test_any_resolution_and_same_output_at_own_size(official_io, official_checkpoint):
    model = _official_model(official_io, official_checkpoint)
    x = official_io['input']
    before = model(x)
    for size in [(80, 80), (96, 96), (64, 96), (72, 40)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 10)
    assert torch.equal(model(x), before)
    model.infer_init()
    for size in [(80, 80), (64, 96)]:
        with torch.inference_mode():  # the resized decay cached here must serve autograd below
            assert model(torch.randn(1, 3, *size)).shape == (1, 10)
        with torch.enable_grad():
            assert model(torch.randn(1, 3, *size, requires_grad=True)).requires_grad
    assert (model(x) - official_io['logits_infer']).abs().max() <= 1e-4


@torch.no_grad()
def test_vheat_tiny_at_other_resolutions():
    model = timm.create_model('vheat_tiny').eval()
    for size in [(256, 256), (384, 384), (224, 320)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


@torch.no_grad()
def test_features_only_strides_and_channels():
    model = timm.create_model('vheat_tiny', features_only=True).eval()
    assert model.feature_info.channels() == [96, 192, 384, 768]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 128, 160))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 32, 40), (1, 192, 16, 20), (1, 384, 8, 10), (1, 768, 4, 5)]
    two = timm.create_model('vheat_tiny', features_only=True, out_indices=(1, 3)).eval()
    assert [f.shape[1] for f in two(torch.randn(1, 3, 64, 64))] == [192, 768]


@torch.no_grad()
def test_timm_loads_local_official_checkpoint(official_io):
    kwargs = dict(official_io['kwargs'])
    kwargs.pop('drop_path_rate')
    model = timm.create_model('vheat_tiny', pretrained=True, **kwargs,
                              pretrained_cfg_overlay=dict(file=os.path.join(FIXTURES, 'official_vheat_mini.pth'),
                                                          num_classes=10))
    model.eval()
    assert (model(official_io['input']) - official_io['logits']).abs().max() <= 1e-4


def test_gradients_reach_every_parameter(official_io):
    torch.manual_seed(0)  # no stochastic depth: with 2 images it may drop a whole branch of both
    model = vHeat(**dict(official_io['kwargs'], drop_path_rate=0.0)).train()
    model(official_io['input']).logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert model.stages[0].freq_embed.grad.abs().sum() > 0
    assert model.stages[0].blocks[0].op.to_k[0].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = timm.create_model('vheat_tiny', drop_path_rate=0.0).train()
    ckpt = timm.create_model('vheat_tiny', drop_path_rate=0.0, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    for model in (plain, ckpt):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='patch_size'):
        vHeat(patch_size=8)
    with pytest.raises(ValueError, match='dct_impl'):
        vHeat(dct_impl='fast')
    with pytest.raises(ValueError, match='same length'):
        vHeat(depths=[2, 2], dims=[96, 192, 384])
    with pytest.raises(ValueError, match='B, C, H, W'):
        vHeat(depths=[1, 1, 1, 1], dims=8)(torch.randn(3, 32, 32))


@torch.no_grad()
def test_inference_fast_path_matches_autograd_path(official_io, official_checkpoint):
    """In-place and fused-residual code (no autograd) and the plain path (autograd) give the same logits."""
    model = _official_model(official_io, official_checkpoint)
    fast = model(official_io['input'])
    with torch.enable_grad():
        tracked = model(official_io['input'].requires_grad_())
    assert tracked.requires_grad
    assert (fast - tracked).abs().max() <= 1e-5


def test_fused_residual_keeps_full_precision_under_autocast():
    linear = torch.nn.Linear(8, 8)
    x, residual = torch.randn(2, 4, 4, 8), torch.randn(2, 4, 4, 8)
    assert torch.allclose(linear_residual(x, linear, residual), residual + linear(x), atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fused = linear_residual(x, linear, residual)
        plain = residual + linear(x)
    assert fused.dtype == plain.dtype == torch.float32
    assert torch.equal(fused, plain)


@pytest.mark.parametrize('variant', [dict(post_norm=False), dict(post_norm=True, layer_scale=1e-1)])
@pytest.mark.parametrize('images_per_group', [2, 0.5])
@torch.no_grad()
def test_inference_in_pieces_matches_whole_batch(monkeypatch, variant, images_per_group):
    """The CPU inference paths change no output: stem and blocks a few images at a time (2), or an image at a
    time in row bands with the DCT in place (0.5); MLPs in row chunks."""
    torch.manual_seed(0)
    model = vHeat(depths=[1, 1, 2, 1], dims=16, num_classes=10, img_size=64, **variant).eval()
    x = torch.randn(5, 3, 64, 80)
    monkeypatch.setattr(chunked, 'MIN_CHUNKED_BYTES', 1 << 40)
    monkeypatch.setattr(chunked, 'GROUP_BYTES', 1 << 40)
    whole = model(x)
    calls = []
    for name in ('in_image_groups', 'conv3x3_rows', 'heat_conduction_'):
        plain = getattr(vheat_module, name)
        monkeypatch.setattr(vheat_module, name, lambda *args, _f=plain, _n=name: calls.append(_n) or _f(*args))
    monkeypatch.setattr(chunked, 'MIN_CHUNKED_BYTES', 0)
    monkeypatch.setattr(chunked, 'GROUP_BYTES', int(images_per_group * 16 * 20 * 16 * 4))  # stride-4 maps
    monkeypatch.setattr(chunked, 'CHUNK_BYTES', 3 * 20 * 64 * 4)  # 3 rows of a stride-4 map's MLP
    pieces = model(x)
    if images_per_group > 1:
        assert set(calls) == {'in_image_groups'}
    else:  # the later stages' maps are small enough for groups again
        assert set(calls) == {'conv3x3_rows', 'heat_conduction_', 'in_image_groups'}
    assert (pieces - whole).abs().max() <= 1e-5
    stem_out = model.stem(x)
    kept = stem_out.clone()
    stage_out = model.stages[0](stem_out)
    assert torch.equal(stem_out, kept)  # a stage writes into its input only when told it may
    assert torch.equal(model.stages[0](stem_out, overwrite_input=True), stage_out)


def test_chunked_mlp_equals_plain_mlp(monkeypatch):
    monkeypatch.setattr(chunked, 'CHUNK_BYTES', 7 * 32 * 4)  # 7 rows a chunk: 20 chunks and a ragged last one
    fc1, fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)
    x, residual = torch.randn(2, 5, 14, 8), torch.randn(2, 5, 14, 8)
    with torch.no_grad():
        plain = fc2(torch.nn.functional.gelu(fc1(x)))
        out = torch.full_like(x, float('nan'))
        assert chunked.chunked_mlp(x, fc1, fc2, residual, out=out) is out
        assert torch.allclose(out, residual + plain, atol=1e-6)
        assert torch.allclose(chunked.chunked_mlp(x, fc1, fc2), plain, atol=1e-6)
