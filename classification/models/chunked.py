"""Cache-sized pieces for inference on CPU.

On CPU the large activations of the early stages cost more to move than to compute: the 4x-wide MLP hidden
layer at stride 4 is 77 MB for 16 images at 224, and glibc serves each block above 32 MB with fresh pages that
fault on first touch, then streams it through DRAM. Without autograd nothing has to be kept for a backward
pass, so a block can run a few images at a time (an image larger than that in bands of rows, see
``conv3x3_rows``) and its per-pixel layers a few MB of rows at a time: the intermediate results stay in cache and
are never allocated whole. Every pixel gets the same arithmetic as without pieces. GPUs want few large kernels
and have a caching allocator, so they keep the plain path, and so does training.
"""
from typing import Callable, Optional

import torch

# Bytes of the widest intermediate result per chunk of rows: a few MB stays in this kind of CPU's L2/L3 cache.
CHUNK_BYTES = 4 << 20
# Bytes of the largest intermediate map per group of images, where a whole layer runs a group at a time.
GROUP_BYTES = 8 << 20
# Smaller results are computed whole: they stay in cache anyway, and large GEMMs run closer to peak.
MIN_CHUNKED_BYTES = 16 << 20


def _cpu_eager(x: torch.Tensor) -> bool:
    """CPU without autocast (which keeps its own dtype rules), outside a JIT trace (FLOP counters such as
    fvcore's read the traced graph, which must show the plain operators) and outside ``torch.compile``."""
    return (x.device.type == 'cpu' and not torch.is_autocast_enabled('cpu') and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def chunking_pays(x: torch.Tensor, nbytes: int) -> bool:
    """Whether to compute grad-free per-pixel work on ``x``, whose widest result takes ``nbytes``, in rows."""
    return _cpu_eager(x) and nbytes > MIN_CHUNKED_BYTES


def grouping_pays(x: torch.Tensor, nbytes: int) -> bool:
    """Whether to run a grad-free layer on ``x``, whose largest map takes ``nbytes``, in pieces: image groups,
    or row bands where ``nbytes`` is one image's."""
    return _cpu_eager(x) and nbytes > GROUP_BYTES


def chunk_rows(width: int, itemsize: int) -> int:
    """Rows per chunk so that one chunk of a ``width``-wide result takes about ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (width * itemsize))


def in_image_groups(fn: Callable[[torch.Tensor, torch.Tensor], object], x: torch.Tensor, out: torch.Tensor,
                    bytes_per_image: int) -> torch.Tensor:
    """Call ``fn(part, part_out)`` on groups of images of ``x`` and ``out`` (dimension 0), each group's
    largest intermediate map (``bytes_per_image`` per image) taking about ``GROUP_BYTES``."""
    group = max(1, GROUP_BYTES // bytes_per_image)
    for part, part_out in zip(x.split(group), out.split(group)):
        fn(part, part_out)
    return out


def chunked_mlp(x: torch.Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear,
                residual: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[residual +] fc2(GELU(fc1(x)))`` of channels-last ``x`` without autograd, ``CHUNK_BYTES`` of the
    hidden layer at a time; written into ``out`` if given."""
    shape = x.shape[:-1] + (fc2.out_features,)
    out = x.new_empty(shape) if out is None else out
    rows_in, rows_out = x.reshape(-1, x.shape[-1]), out.view(-1, shape[-1])
    rows_res = None if residual is None else residual.reshape(-1, shape[-1])
    step = chunk_rows(fc1.out_features, x.element_size())
    for start in range(0, rows_in.shape[0], step):
        part = slice(start, start + step)
        hidden = torch.ops.aten.gelu_(torch.addmm(fc1.bias, rows_in[part], fc1.weight.t()))
        if rows_res is None:
            torch.addmm(fc2.bias, hidden, fc2.weight.t(), out=rows_out[part])
        else:
            torch.addmm(rows_res[part], hidden, fc2.weight.t(), out=rows_out[part]).add_(fc2.bias)
    return out


def conv3x3_rows(conv: torch.nn.Conv2d, source: Callable[[int, int], torch.Tensor], height: int,
                 start: int, stop: int) -> torch.Tensor:
    """Output rows [start, stop) of a 3x3, padding-1 convolution, channels-last (B, rows, W', C').

    ``source(lo, hi)`` makes input rows [lo, hi) (of ``height``) channels-last; only the rows that these outputs
    read are asked for, and the zero padding above and below the image is added here.
    """
    stride = conv.stride[0]
    lo, hi = start * stride - 1, (stop - 1) * stride + 2
    band = source(max(lo, 0), min(hi, height))
    if lo < 0 or hi > height:
        band = torch.nn.functional.pad(band, (0, 0, 0, 0, max(-lo, 0), max(hi - height, 0)))
    out = torch.nn.functional.conv2d(band.permute(0, 3, 1, 2), conv.weight, conv.bias, stride=conv.stride,
                                     padding=(0, 1), groups=conv.groups)
    return out.permute(0, 2, 3, 1)


def row_bands(height: int, row_bytes: int):
    """(start, stop) bands of ``height`` rows, each about ``CHUNK_BYTES`` at ``row_bytes`` per row."""
    step = max(1, CHUNK_BYTES // row_bytes)
    return [(start, min(start + step, height)) for start in range(0, height, step)]
