"""CPU streaming inference: the same vHeat, computed in cache-sized pieces. Off unless switched on:

    from classification.models import enable_cpu_streaming
    model = enable_cpu_streaming(timm.create_model('vheat_tiny').eval())   # the same model object

Why: on CPU the large activations of the early stages cost more to move than to compute. The 4x-wide MLP
hidden layer at stride 4 is 77 MB for 16 images at 224, and glibc serves each block above 32 MB with fresh pages
that fault on first touch, then streams it through DRAM. Without autograd nothing has to be kept for a backward
pass, so the engine runs the stem and each block a few images at a time (about ``GROUP_BYTES`` of feature map),
the MLP a few MB of rows at a time (its hidden layer is never allocated whole), and a single image whose map is
larger than that in bands of rows: the convolutions read a one-row halo (``conv3x3_rows``), the heat source is
made twice instead of being kept, and the DCT runs in place band by band (``heat_conduction_``), so a block needs
one map-sized buffer besides its input. It also uses in-place activations and lets each branch's last Linear
accumulate into the residual. Every pixel gets the same arithmetic as in the reference forward (the tests compare
them to 1e-5).

How: ``enable_cpu_streaming`` gives the model's Stem, HeatStage and HeatBlock modules (and a plain vHeat itself)
the engine's subclass of their class; they keep their parameters, names and state dict.
``disable_cpu_streaming`` gives the reference classes back. The engine streams only in eager inference on CPU:
with autograd on, under autocast, while traced, scripted, compiled or exported, or on another device, every
module runs its reference forward.

Within a stage a block writes its output into the map the previous block of that stage made (stage 0, in
``forward_features``, into the stem's output). Modules with forward hooks are called as usual, never write into
their input, and their output is never written into: what a hook keeps stays as it was.
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dct import dct_matrix, dctn
from .vheat import HeatBlock, HeatStage, Stem, check_image_batch, resize_map, vHeat
from .vheat import _channels_first as _nchw, _channels_last as _nhwc

__all__ = ['enable_cpu_streaming', 'disable_cpu_streaming']

# Bytes of the widest intermediate result per chunk of rows: a few MB stays in this kind of CPU's L2/L3 cache.
CHUNK_BYTES = 4 << 20
# Bytes of the largest intermediate map per group of images, where a whole layer runs a group at a time.
GROUP_BYTES = 8 << 20
# Smaller MLP hidden layers are computed whole: they stay in cache anyway, and large GEMMs run closer to peak.
MIN_CHUNKED_BYTES = 16 << 20


def streams(x: torch.Tensor) -> bool:
    """Whether the engine computes on ``x``: eager inference on CPU, nothing recording the graph."""
    return (x.device.type == 'cpu' and not torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu')
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export())


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def chunk_rows(width: int, itemsize: int) -> int:
    """Rows per chunk so that one chunk of a ``width``-wide result takes about ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (width * itemsize))


def row_bands(height: int, row_bytes: int) -> List[Tuple[int, int]]:
    """(start, stop) bands of ``height`` rows, each about ``CHUNK_BYTES`` at ``row_bytes`` per row."""
    step = max(1, CHUNK_BYTES // row_bytes)
    return [(start, min(start + step, height)) for start in range(0, height, step)]


def in_image_groups(fn: Callable[[torch.Tensor, torch.Tensor], object], x: torch.Tensor, out: torch.Tensor,
                    bytes_per_image: int) -> torch.Tensor:
    """Call ``fn(part, part_out)`` on groups of images of ``x`` and ``out`` (dimension 0), each group's
    largest intermediate map (``bytes_per_image`` per image) taking about ``GROUP_BYTES``."""
    group = max(1, GROUP_BYTES // bytes_per_image)
    for part, part_out in zip(x.split(group), out.split(group)):
        fn(part, part_out)
    return out


def linear_residual(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x)`` with the residual accumulated by the matrix product itself (one pass less)."""
    out = torch.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), linear.weight.t())
    return out.add_(linear.bias).view(residual.shape)


def chunked_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, residual: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[residual +] fc2(GELU(fc1(x)))`` of channels-last ``x``, ``CHUNK_BYTES`` of the hidden layer at a time
    (whole if that layer is small); written into ``out`` if given."""
    shape = x.shape[:-1] + (fc2.out_features,)
    out = x.new_empty(shape) if out is None else out
    rows_in, rows_out = x.reshape(-1, x.shape[-1]), out.view(-1, shape[-1])
    rows_res = None if residual is None else residual.reshape(-1, shape[-1])
    hidden_bytes = rows_in.shape[0] * fc1.out_features * x.element_size()
    step = chunk_rows(fc1.out_features, x.element_size()) if hidden_bytes > MIN_CHUNKED_BYTES else rows_in.shape[0]
    for start in range(0, rows_in.shape[0], step):
        part = slice(start, start + step)
        hidden = torch.ops.aten.gelu_(torch.addmm(fc1.bias, rows_in[part], fc1.weight.t()))
        if rows_res is None:
            torch.addmm(fc2.bias, hidden, fc2.weight.t(), out=rows_out[part])
        else:
            torch.addmm(rows_res[part], hidden, fc2.weight.t(), out=rows_out[part]).add_(fc2.bias)
    return out


def conv3x3_rows(conv: nn.Conv2d, source: Callable[[int, int], torch.Tensor], height: int,
                 start: int, stop: int) -> torch.Tensor:
    """Output rows [start, stop) of a 3x3, padding-1 convolution, channels-last (B, rows, W', C').

    ``source(lo, hi)`` makes input rows [lo, hi) (of ``height``) channels-last; only the rows that these outputs
    read are asked for, and the zero padding above and below the image is added here.
    """
    stride = conv.stride[0]
    lo, hi = start * stride - 1, (stop - 1) * stride + 2
    band = source(max(lo, 0), min(hi, height))
    if lo < 0 or hi > height:
        band = F.pad(band, (0, 0, 0, 0, max(-lo, 0), max(hi - height, 0)))
    out = F.conv2d(_nchw(band), conv.weight, conv.bias, stride=conv.stride, padding=(0, 1), groups=conv.groups)
    return _nhwc(out)


def heat_conduction_(u: torch.Tensor, decay: torch.Tensor, band_bytes: int) -> torch.Tensor:
    """IDCT2D(DCT2D(u) * decay) in place (matrix DCT), band by band, for maps too large for cache.

    The transform along H runs on column bands and the one along W on row bands, each band through a
    temporary of about ``band_bytes``; the forward W transform, the decay and the inverse W transform run
    together on one row band. No second map-sized buffer is needed.
    """
    _, height, width, channels = u.shape
    mat_h, mat_w = dct_matrix(height, u.device, u.dtype), dct_matrix(width, u.device, u.dtype)
    cols = max(1, band_bytes // (height * channels * u.element_size()))
    rows = max(1, band_bytes // (width * channels * u.element_size()))

    def along_height(image: torch.Tensor, mat: torch.Tensor) -> None:
        for start in range(0, width, cols):
            band = image[:, start:start + cols]  # (H, w, C) view; as a (H, w*C) matrix its rows are strided
            band.copy_(torch.matmul(mat, band.reshape(height, -1)).view(band.shape))

    for image in u:
        along_height(image, mat_h)
        for start in range(0, height, rows):
            band = image[start:start + rows]
            spectrum = torch.matmul(mat_w, band).mul_(decay[start:start + rows])
            band.copy_(torch.matmul(mat_w.t(), spectrum))
        along_height(image, mat_h.t())
    return u


class StreamingStem(Stem):
    """The stem a few images at a time, or one image in bands of output rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        hidden_bytes = (height + 1) // 2 * ((width + 1) // 2) * self.conv1.out_channels * x.element_size()
        if not streams(x):
            return super().forward(x)
        if batch * hidden_bytes <= GROUP_BYTES:
            return self._whole(x)
        out = x.new_empty((batch, (height + 3) // 4, (width + 3) // 4, self.conv2.out_channels))
        if hidden_bytes > GROUP_BYTES:
            return self._banded(x, out)
        return in_image_groups(lambda part, part_out: part_out.copy_(self._whole(part)), x, out, hidden_bytes)

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.ops.aten.gelu_(self.norm1(_nhwc(self.conv1(x.contiguous(memory_format=torch.channels_last)))))
        return self.norm2(_nhwc(self.conv2(_nchw(x))))

    def _banded(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        height, half_height = x.shape[2], (x.shape[2] + 1) // 2
        row_bytes = 2 * ((x.shape[3] + 1) // 2) * self.conv1.out_channels * x.element_size()
        for image, image_out in zip(x.split(1), out.split(1)):
            pixels = _nhwc(image)

            def half_resolution(start: int, stop: int) -> torch.Tensor:
                rows = conv3x3_rows(self.conv1, lambda a, b: pixels[:, a:b].contiguous(), height, start, stop)
                return torch.ops.aten.gelu_(self.norm1(rows))

            for start, stop in row_bands(out.shape[1], row_bytes):
                image_out[:, start:stop] = self.norm2(
                    conv3x3_rows(self.conv2, half_resolution, half_height, start, stop))
        return out


class StreamingHeatBlock(HeatBlock):
    """The block a few images at a time, or one image in row bands with the DCT in place."""

    def forward(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.stream(x, freq_embed, overwrite=False)

    def stream(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor], overwrite: bool) -> torch.Tensor:
        """The block's output; with ``overwrite`` it may be written into ``x``, which the caller no longer needs."""
        if not streams(x):
            return super().forward(x, freq_embed)
        if x.nbytes <= GROUP_BYTES:
            return self._whole(x, freq_embed)
        if x[0].nbytes > GROUP_BYTES and self.op.dct_impl == 'matmul':
            return self._banded(x, freq_embed, overwrite)
        return in_image_groups(lambda part, out: self._whole(part, freq_embed, out),
                               x, x if overwrite else torch.empty_like(x), x[0].nbytes)

    def _decay(self, size: List[int], freq_embed: Optional[torch.Tensor]) -> torch.Tensor:
        """The operator's decay map; a resized ``k_exp`` is kept until the size or the weights change."""
        op = self.op
        if not op.infer_mode or list(op.k_exp.shape[:-1]) == size:
            return op.decay(size, freq_embed)
        key = (tuple(size), op.k_exp.data_ptr(), op.k_exp._version)
        cached = getattr(self, '_streaming_decay', None)
        if cached is None or cached[0] != key:
            cached = (key, op.decay(size, None))
            self._streaming_decay = cached
        return cached[1]

    def _split_linear(self):
        (w_u, w_z), (b_u, b_z) = self.op.linear.weight.chunk(2), self.op.linear.bias.chunk(2)
        return (w_u, b_u), (w_z, b_z)

    def _gate(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.op.out_norm(u).mul_(F.silu(z, inplace=True))

    def _gated(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor]) -> torch.Tensor:
        """The operator of ``x`` (already normalised in pre-norm blocks) up to its output Linear."""
        op = self.op
        x = _nhwc(op.dwconv(_nchw(x)))
        (w_u, b_u), (w_z, b_z) = self._split_linear()
        u, z = F.linear(x, w_u, b_u), F.linear(x, w_z, b_z)
        spectrum = dctn(u, op.dct_impl).mul_(self._decay([u.shape[1], u.shape[2]], freq_embed))
        return self._gate(dctn(spectrum, op.dct_impl, inverse=True), z)

    def _whole(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor],
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._finish(x, self._gated(x if self.post_norm else self.norm1(x), freq_embed), out)

    def _finish(self, x: torch.Tensor, gated: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The block's output from its input ``x`` and the operator's map before its output Linear."""
        drop_path_active = self.training and not isinstance(self.drop_path, nn.Identity)
        if not (self.post_norm or self.gamma1 is not None or drop_path_active):
            x = linear_residual(gated, self.op.out_linear, x)  # each branch's last Linear accumulates into x
            return chunked_mlp(self.norm2(x), self.mlp.fc1, self.mlp.fc2, residual=x, out=out)
        y = self.op.out_linear(gated)
        y = self.norm1(y) if self.post_norm else y
        x = x + self.drop_path(y if self.gamma1 is None else y * self.gamma1)
        y = self.norm2(chunked_mlp(x, self.mlp.fc1, self.mlp.fc2)) if self.post_norm else \
            chunked_mlp(self.norm2(x), self.mlp.fc1, self.mlp.fc2)
        return torch.add(x, self.drop_path(y if self.gamma2 is None else y * self.gamma2), out=out)

    def _banded(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor], overwrite: bool) -> torch.Tensor:
        """One image at a time in row bands, with one map-sized buffer besides x (one image's if ``overwrite``).

        The heat source (norm1 and the depthwise conv) is made in row bands and made twice, for u and for the
        gate z, instead of being kept; the DCT runs in place; each band of the output overwrites the band of
        u it was made from (or, with ``overwrite``, of x, keeping the row the next band's conv still reads).
        """
        op, (_, height, width, dim) = self.op, x.shape
        (w_u, b_u), (w_z, b_z) = self._split_linear()
        decay = self._decay([height, width], freq_embed)
        bands = row_bands(height, 4 * width * dim * x.element_size())  # the MLP is 4x wider: chunked below
        out = x if overwrite else torch.empty_like(x)
        scratch = x.new_empty((1,) + x.shape[1:]) if overwrite else None
        for image, image_out in zip(x.split(1), out.split(1)):
            u = image_out if scratch is None else scratch
            above = None  # the input row above the current band, saved before the band above was overwritten

            def source(start: int, stop: int, band_start: int = 0) -> torch.Tensor:
                rows = image[:, start:stop]
                if above is not None and start < band_start:
                    rows = torch.cat([above, image[:, band_start:stop]], dim=1)
                return rows if self.post_norm else self.norm1(rows)

            for start, stop in bands:
                heat_source = conv3x3_rows(op.dwconv, source, height, start, stop)
                torch.addmm(b_u, heat_source.reshape(-1, dim), w_u.t(), out=u[:, start:stop].view(-1, dim))
            heat_conduction_(u, decay, CHUNK_BYTES)
            for start, stop in bands:
                heat_source = conv3x3_rows(op.dwconv, lambda a, b: source(a, b, start), height, start, stop)
                if overwrite:
                    above = image[:, stop - 1:stop].clone()
                gated = self._gate(u[:, start:stop], F.linear(heat_source, w_z, b_z))
                self._finish(image[:, start:stop], gated, out=image_out[:, start:stop])
        return out


class StreamingHeatStage(HeatStage):
    """Blocks streamed; each writes into the map the block before it made (the stage's own maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stream(x, overwrite_input=False)

    def stream(self, x: torch.Tensor, overwrite_input: bool) -> torch.Tensor:
        """``overwrite_input``: the first block may write into ``x`` too (the caller no longer needs it)."""
        if not streams(x):
            return super().forward(x)
        if isinstance(self.downsample, nn.Identity):
            overwrite = overwrite_input
        else:
            overwrite = not _has_hooks(self.downsample)
            x = self.downsample(x)
        freq_embed = resize_map(self.freq_embed, [x.shape[1], x.shape[2]]) if hasattr(self, 'freq_embed') else None
        for block in self.blocks:
            if _has_hooks(block):  # its hooks see its input and keep its output: neither is written into
                x, overwrite = block(x, freq_embed), False
            else:
                x, overwrite = block.stream(x, freq_embed, overwrite), True
        return x


class StreamingVHeat(vHeat):
    """``forward_features`` lets stage 0 write into the stem's output, a map no one else holds."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(check_image_batch(x))
        for i, stage in enumerate(self.stages):
            private = i == 0 and not _has_hooks(self.stem)
            x = stage(x) if _has_hooks(stage) else stage.stream(x, overwrite_input=private)
        return x


_ENGINE = {Stem: StreamingStem, HeatBlock: StreamingHeatBlock, HeatStage: StreamingHeatStage, vHeat: StreamingVHeat}
_REFERENCE = {engine: reference for reference, engine in _ENGINE.items()}


def enable_cpu_streaming(model: nn.Module) -> nn.Module:
    """Switch the CPU streaming engine on for every vHeat module in ``model`` (2-D vHeat); returns ``model``."""
    if any(isinstance(module, nn.Conv3d) for module in model.modules()):
        raise ValueError('the CPU streaming engine streams 2-D feature maps; vHeat3D runs its reference forward')
    for module in model.modules():
        if type(module) in _ENGINE:
            module.__class__ = _ENGINE[type(module)]
    return model


def disable_cpu_streaming(model: nn.Module) -> nn.Module:
    """Give every module its reference class back; returns ``model``."""
    for module in model.modules():
        if type(module) in _REFERENCE:
            module.__class__ = _REFERENCE[type(module)]
            module.__dict__.pop('_streaming_decay', None)
    return model
