"""Heat conduction as a layer: any size and layout, and clear errors for what it cannot take."""
import pytest
import torch
import torch.nn as nn

import vheat


def test_one_layer_at_three_odd_non_square_sizes_and_batch_one():
    """One model meets the layer at 17x9, 9x5 and 5x3; channels last gives the same numbers; gradients reach the
    frequency embeddings of all three."""
    torch.manual_seed(0)
    layers = nn.ModuleList(vheat.HeatConduction2d(8) for _ in range(3))
    convs = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(2))
    x = torch.randn(1, 8, 17, 9)
    shapes = []
    for i, layer in enumerate(layers):
        y = layer(x)
        shapes.append(tuple(y.shape))
        last = vheat.HeatConduction2d(8, channels_last=True)
        last.load_state_dict(layer.state_dict())
        assert torch.allclose(last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), y, atol=1e-6)
        x = convs[i](y) if i < 2 else y
    assert shapes == [(1, 8, 17, 9), (1, 8, 9, 5), (1, 8, 5, 3)]
    x.sum().backward()
    assert all(layer.freq_embed.grad.abs().sum() > 0 for layer in layers)


def test_the_layer_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match=r'HeatConduction2d\(8\) expects a \(B, C, H, W\) batch with C = 8, got '
                                         r'shape \[1, 4, 5, 5\]'):
        vheat.HeatConduction2d(8)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r'\(B, L, C\) batch with C = 8, got shape \[2, 8, 5, 5\]'):
        vheat.HeatConduction1d(8, channels_last=True)(torch.randn(2, 8, 5, 5))
    with pytest.raises(ValueError, match='embed_size needs one value per spatial axis'):
        vheat.HeatConduction3d(8, embed_size=(4, 4))
