"""vHeat against the official implementation's outputs, layouts, counts; resolutions, features, gradients."""
import json
import os

import pytest
import timm
import torch

from conftest import FIXTURES, jit_script
from vheat import cpu_streaming, disable_cpu_streaming, enable_cpu_streaming, vHeat

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


SMALL = dict(depths=[1, 1, 2, 1], dims=16, num_classes=10, img_size=64)


@torch.no_grad()
def test_timm_feature_and_head_api():
    """What timm's model checks ask of a classifier: NHWC features declared as such, pre-logits, removable
    classifier and pooling."""
    model = vHeat(**SMALL).eval()
    x = torch.randn(2, 3, 64, 96)
    assert model.output_fmt == 'NHWC'
    features = model.forward_features(x)
    assert features.shape == (2, 2, 3, 128) and model.num_features == model.head_hidden_size == 128
    assert model.forward_head(features, pre_logits=True).shape == (2, 128)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (2, 128)
    model.reset_classifier(0, '')
    assert model(x).shape == (2, 2, 3, 128)
    assert vHeat(**dict(SMALL, num_classes=0), global_pool='').eval()(x).shape == (2, 2, 3, 128)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(0, 'max')


def _fx(model):
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize('variant', [dict(post_norm=False), dict(post_norm=True, layer_scale=1e-1)])
def test_torch_fx_forward_is_exact_and_backward_reaches_every_parameter(variant):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 80)
    model = vHeat(**SMALL, **variant).eval()
    with torch.inference_mode():
        traced = _fx(model)
        assert torch.equal(next(iter(traced(x).values())), model(x))
    model = vHeat(**SMALL, **variant, drop_path_rate=0.0).train()
    traced = _fx(model)
    next(iter(traced(x).values())).logsumexp(1).sum().backward()
    missing = [n for n, p in traced.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == [] and len(list(traced.parameters())) == len(list(model.parameters()))


@torch.no_grad()
def test_torchscript_of_the_model_and_of_its_fx_graph(official_io, official_checkpoint):
    model = _official_model(official_io, official_checkpoint)
    x = official_io['input']
    scripted = jit_script(model)
    assert (scripted(x) - official_io['logits']).abs().max() <= 1e-4
    assert torch.equal(next(iter(jit_script(_fx(model))(x).values())), model(x))
    model.infer_init()
    assert (jit_script(model)(x) - official_io['logits_infer']).abs().max() <= 1e-4


def _recorded(monkeypatch, calls):
    for name in ('in_image_groups', 'conv3x3_rows', 'heat_conduction_'):
        plain = getattr(cpu_streaming, name)
        monkeypatch.setattr(cpu_streaming, name, lambda *args, _f=plain, _n=name: calls.append(_n) or _f(*args))


@pytest.mark.parametrize('variant', [dict(post_norm=False), dict(post_norm=True, layer_scale=1e-1)])
@pytest.mark.parametrize('images_per_group', [2, 0.5])
@torch.no_grad()
def test_cpu_streaming_gives_the_reference_outputs(monkeypatch, variant, images_per_group):
    """The engine changes no output: stem and blocks a few images at a time (2), or one image at a time in row
    bands with the DCT in place (0.5); MLPs in row chunks (budgets forced tiny)."""
    torch.manual_seed(0)
    model = vHeat(**SMALL, **variant).eval()
    x = torch.randn(5, 3, 64, 80)
    reference = model(x)
    calls = []
    _recorded(monkeypatch, calls)
    monkeypatch.setattr(cpu_streaming, 'MIN_CHUNKED_BYTES', 0)
    monkeypatch.setattr(cpu_streaming, 'GROUP_BYTES', int(images_per_group * 16 * 20 * 16 * 4))  # stride-4 maps
    monkeypatch.setattr(cpu_streaming, 'CHUNK_BYTES', 3 * 20 * 64 * 4)  # 3 rows of a stride-4 map's MLP
    assert model(x).equal(reference) and calls == []  # off unless switched on
    assert enable_cpu_streaming(model) is model
    streamed = model(x)
    if images_per_group > 1:
        assert set(calls) == {'in_image_groups'}
    else:  # the later stages' maps are small enough for groups again
        assert set(calls) == {'conv3x3_rows', 'heat_conduction_', 'in_image_groups'}
    assert (streamed - reference).abs().max() <= 1e-5
    stem_out = model.stem(x)
    kept = stem_out.clone()
    stage_out = model.stages[0](stem_out)
    assert torch.equal(stem_out, kept)  # a stage writes into its input only when told it may
    assert torch.equal(model.stages[0].stream(stem_out, overwrite_input=True), stage_out)
    with torch.enable_grad():  # autograd on: the reference forward, whatever the switch says
        calls.clear()
        tracked = model(x.requires_grad_())
        assert tracked.requires_grad and calls == [] and (tracked - reference).abs().max() <= 1e-5
    assert disable_cpu_streaming(model)(x).equal(reference)


@torch.no_grad()
def test_cpu_streaming_of_an_inference_layout_at_another_size(monkeypatch, official_io, official_checkpoint):
    """Resized decay maps are kept per size and follow new weights."""
    monkeypatch.setattr(cpu_streaming, 'GROUP_BYTES', 16 * 24 * 24 * 4 // 2)
    model = _official_model(official_io, official_checkpoint)
    model.infer_init()
    x = torch.randn(2, 3, 96, 96)
    reference = model(x)
    enable_cpu_streaming(model)
    assert (model(x) - reference).abs().max() <= 1e-5
    other = vHeat(**official_io['kwargs'], infer_mode=True).eval()
    model.load_state_dict(other.state_dict())
    assert (model(x) - other(x)).abs().max() <= 1e-5


@pytest.mark.parametrize('module', ['stem', 'stages.0', 'stages.2.downsample', 'stages.2.blocks.0',
                                    'stages.2.blocks.1'])
def test_cpu_streaming_runs_hooks_and_keeps_what_they_see(monkeypatch, module):
    """A hooked module's input and output stay as the hook saw them, though the engine reuses other maps."""
    monkeypatch.setattr(cpu_streaming, 'GROUP_BYTES', 0)
    model = enable_cpu_streaming(vHeat(**SMALL).eval())
    seen = []
    model.get_submodule(module).register_forward_hook(
        lambda m, args, out: seen.append((args[0].clone(), args[0], out.clone(), out)))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(seen) == 1
    copy_in, kept_in, copy_out, kept_out = seen[0]
    assert torch.equal(copy_in, kept_in) and torch.equal(copy_out, kept_out)
