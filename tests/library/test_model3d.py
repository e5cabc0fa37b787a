"""vHeat3D: the 2-D modules over volumes and video; inflation of 2-D checkpoints; timm features."""
import pytest
import timm
import torch

from vheat import inflate_state_dict, vHeat, vHeat3D

VIDEO = dict(patch_size=(2, 4, 4), downsample_stride=(1, 2, 2))
SMALL = dict(dims=8, depths=[1, 1, 2, 1], num_classes=5, in_chans=1, volume_size=(32, 32, 32))


def _official_3d(official_io, official_checkpoint, frames):
    """The official fixture (a 64 px vHeat) inflated into a video model."""
    kwargs = {k: v for k, v in official_io['kwargs'].items() if k != 'img_size'}
    model = vHeat3D(**kwargs, volume_size=(frames // 2, 64, 64), **VIDEO)
    model.load_state_dict(official_checkpoint['model'])  # a 2-D checkpoint: inflated on load
    return model.eval()


@torch.no_grad()
def test_inflated_model_on_a_constant_video_gives_the_2d_features(official_io, official_checkpoint):
    flat = vHeat(**official_io['kwargs']).eval()
    flat.load_state_dict(official_checkpoint['model'])
    x = official_io['input']
    assert (flat(x) - official_io['logits']).abs().max() <= 1e-4  # the 2-D model is unchanged by the 3-D work
    deep = _official_3d(official_io, official_checkpoint, 8)
    for frames in (8, 5):  # 5: the temporal stride-2 stem rounds up, and the embeddings are resized along time
        video = x[:, :, None].expand(-1, -1, frames, -1, -1).contiguous()
        for plane, volume in zip(flat.forward_intermediates(x, intermediates_only=True),
                                 deep.forward_intermediates(video, intermediates_only=True)):
            assert volume.shape[2] == (frames + 1) // 2
            assert (volume - plane[:, :, None]).abs().max() <= 1e-5
        assert (deep(video) - flat(x)).abs().max() <= 1e-5
    # and the inflation matters: a moving video gives other features than its frames do
    moving = torch.stack([torch.roll(x, shifts=4 * t, dims=3) for t in range(8)], dim=2)
    assert (deep(moving) - flat(x)).abs().max() > 1e-2


def test_inflation_puts_2d_kernels_in_the_centre_slice(official_checkpoint, official_io):
    model = _official_3d(official_io, official_checkpoint, 8)
    state = inflate_state_dict(official_checkpoint['model'], model)
    kernel, source = state['stages.2.blocks.1.op.dwconv.weight'], official_checkpoint['model']['layers.2.1.op.dwconv.weight']
    assert kernel.shape == (64, 1, 3, 3, 3)
    assert torch.equal(kernel[:, :, 1], source) and not kernel[:, :, 0].any() and not kernel[:, :, 2].any()
    embed = state['stages.0.freq_embed']
    assert embed.shape == (2, 16, 16, 16) and all(torch.equal(e, official_checkpoint['model']['freq_embed.0'])
                                                   for e in embed)
    model.infer_init()
    with pytest.raises(ValueError, match='inference layout'):
        inflate_state_dict(dict(model.state_dict(), **{'stem.conv1.weight': torch.zeros(8, 3, 3, 3)}), model)


@torch.no_grad()
def test_infer_init_leaves_outputs_unchanged():
    """At the embeddings' size; at other sizes the folded decay maps are resized (trilinearly) instead."""
    torch.manual_seed(0)
    model = vHeat3D(**SMALL).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    before = model(x)
    folded = vHeat3D(**SMALL, infer_mode=True).eval()
    folded.load_state_dict(model.state_dict())  # training layout folded on load
    assert (folded(x) - before).abs().max() <= 1e-5
    model.infer_init()
    assert (model(x) - before).abs().max() <= 1e-5
    assert not any('freq_embed' in k or 'to_k' in k for k in model.state_dict())
    assert model(torch.randn(2, 1, 40, 32, 48)).shape == (2, 5)


def test_gradients_reach_every_parameter():
    """At 64^3 (at 32^3 the last stage is 1x1x1, where the decay of frequency 0 is 1 whatever k is)."""
    torch.manual_seed(0)
    model = vHeat3D(**SMALL, drop_path_rate=0.0, post_norm=True, layer_scale=0.1).train()
    model(torch.randn(2, 1, 64, 64, 64)).logsumexp(1).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []


@torch.no_grad()
@pytest.mark.parametrize('kwargs,shape,expected', [
    (dict(VIDEO, volume_size=(16, 128, 128)), (1, 3, 16, 128, 128),
     [(96, 8, 32, 32), (192, 8, 16, 16), (384, 8, 8, 8), (768, 8, 4, 4)]),
    ({}, (1, 3, 64, 64, 64), [(96, 16, 16, 16), (192, 8, 8, 8), (384, 4, 4, 4), (768, 2, 2, 2)]),
])
def test_timm_features_at_the_expected_strides(kwargs, shape, expected):
    model = timm.create_model('vheat3d_tiny', features_only=True, **kwargs).eval()
    assert model.feature_info.channels() == [96, 192, 384, 768]
    strides = [info['stride'] for info in model.feature_info.info]
    assert all(tuple(n // s for n, s in zip(shape[2:], stride)) == tuple(e[1:]) for stride, e in zip(strides, expected))
    assert [tuple(f.shape[1:]) for f in model(torch.randn(shape))] == expected


def test_bad_3d_arguments_are_refused():
    with pytest.raises(ValueError, match='patch_size'):
        vHeat3D(patch_size=(3, 4, 4))
    with pytest.raises(ValueError, match='one value per spatial axis'):
        vHeat3D(downsample_stride=(2, 2))
    with pytest.raises(ValueError, match=r'\(B, C, D, H, W\) volume'):
        vHeat3D(**SMALL)(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match='smaller than the stride'):
        vHeat3D(**dict(SMALL, volume_size=(16, 32, 32)))
    from vheat import enable_cpu_streaming
    with pytest.raises(ValueError, match='2-D'):
        enable_cpu_streaming(vHeat3D(**SMALL))
