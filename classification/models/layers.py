"""Heat conduction as a layer for any network: ``HeatConduction1d`` / ``2d`` / ``3d``.

The backbone's operator (:class:`~.vheat.HeatConduction`, the same module and the same forward) with a learned
frequency embedding of its own, resized to whatever map it meets (any size, non-square, odd, batch 1), instead of
the one a vHeat stage shares among its blocks. Inputs and outputs follow PyTorch's convolutions: (B, C, L),
(B, C, H, W), (B, C, D, H, W), or channels last with ``channels_last=True``.

    layer = HeatConduction2d(256)          # in_channels == out_channels, shape kept
    y = layer(torch.randn(8, 256, 37, 23))
"""
from typing import List, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, trunc_normal_

from .vheat import HeatConduction, _channels_first, _channels_last, _per_axis, resize_map, vHeat

__all__ = ['HeatConduction1d', 'HeatConduction2d', 'HeatConduction3d']

@register_notrace_function
def check_layer_input(x: torch.Tensor, channels: int, spatial_dims: int, channels_last: bool) -> torch.Tensor:
    """``x`` itself if it is a batch the layer takes; a ValueError naming the expected layout and the shape."""
    channel_axis = x.ndim - 1 if channels_last else 1
    if x.ndim != spatial_dims + 2 or x.shape[channel_axis] != channels:
        axes = ['L'] if spatial_dims == 1 else ['H', 'W'] if spatial_dims == 2 else ['D', 'H', 'W']
        layout = '(B, ' + ', '.join(axes + ['C'] if channels_last else ['C'] + axes) + ')'
        raise ValueError(f'HeatConduction{spatial_dims}d({channels}) expects a {layout} batch with C = {channels}, '
                         f'got shape {list(x.shape)}')
    return x


class _HeatConductionNd(nn.Module):
    """Heat conduction over the ``spatial_dims`` trailing axes, with its own frequency embedding.

    Args:
        channels: input and output channels.
        embed_size: spatial size of the learned frequency embedding (an int, or one per axis); it is resized to the
            size of each input, so it bounds no input size. 14 is a vHeat-T stage-3 embedding at 224.
        channels_last: take and return (B, *spatial, C) instead of (B, C, *spatial).
        dct_impl: 'matmul' or 'fft' (see :mod:`.dct`).
    """
    SPATIAL_DIMS = 2

    def __init__(self, channels: int, embed_size: Union[int, Sequence[int]] = 14, channels_last: bool = False,
                 dct_impl: str = 'matmul'):
        super().__init__()
        if channels < 1:
            raise ValueError(f'channels must be positive, got {channels}')
        self.channels, self.channels_last, self.spatial_dims = channels, channels_last, self.SPATIAL_DIMS
        size = _per_axis(embed_size, self.spatial_dims, 'embed_size')
        if min(size) < 1:
            raise ValueError(f'embed_size must be positive, got {embed_size}')
        self.op = HeatConduction(channels, size, dct_impl=dct_impl)
        self.freq_embed = nn.Parameter(torch.zeros(*size, channels))
        trunc_normal_(self.freq_embed, std=.02)
        self.op.apply(vHeat._init_weights)  # the backbone's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_layer_input(x, self.channels, self.spatial_dims, self.channels_last)
        if not self.channels_last:
            x = _channels_last(x)
        size: List[int] = [x.shape[axis + 1] for axis in range(self.spatial_dims)]
        x = self.op(x, resize_map(self.freq_embed, size))
        return x if self.channels_last else _channels_first(x)

    def extra_repr(self) -> str:
        return f'{self.channels}, embed_size={tuple(self.freq_embed.shape[:-1])}, channels_last={self.channels_last}'


class HeatConduction1d(_HeatConductionNd):
    """Heat conduction along a sequence: (B, C, L) in and out (``channels_last``: (B, L, C))."""
    SPATIAL_DIMS = 1


class HeatConduction2d(_HeatConductionNd):
    """Heat conduction over a map: (B, C, H, W) in and out (``channels_last``: (B, H, W, C))."""
    SPATIAL_DIMS = 2


class HeatConduction3d(_HeatConductionNd):
    """Heat conduction over a volume or a clip: (B, C, D, H, W) in and out (``channels_last``: (B, D, H, W, C))."""
    SPATIAL_DIMS = 3
