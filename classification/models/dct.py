"""Orthonormal DCT-II / DCT-III along every spatial axis of channels-last tensors, and the heat-conduction core
built on them, for 2-D maps (B, H, W, C) and 3-D volumes (B, D, H, W, C) alike: one implementation, an axis at a
time.

Two interchangeable implementations of the transform, chosen per model (``vHeat(dct_impl=...)``), never per
input:
- ``matmul`` (default): multiplies by the N x N DCT matrix, O(N) work per output element; what the official code
  computes (as 1-D convolutions), and the fastest for the feature maps of a classifier.
- ``fft``: Makhoul's algorithm, one real FFT of length N per line, O(log N) per element, for large maps on
  devices where it pays off (``tools/analysis_tools/benchmark.py --dct-sweep`` measures both per map size).
Both agree with ``scipy.fft.dct(norm="ortho")``.

Constant tensors (DCT matrices, FFT twiddles, the frequency-distance map of the decay) are cached per
(size, device, dtype) and always created outside inference mode, so a cache filled under
``torch.inference_mode()`` can still be used by a training step later. The functions the model calls are
registered with timm as FX leaves (their shapes are read inside) and are scriptable by TorchScript.
"""
import math
from functools import lru_cache
from typing import List, Tuple

import torch
from timm.layers import register_notrace_function

DCT_IMPLS = ('matmul', 'fft')


@lru_cache(maxsize=128)
def dct_matrix(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n, rows are frequencies): DCT(x) = D @ x, IDCT(X) = D.T @ X."""
    with torch.inference_mode(False):
        pos = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        freq = torch.arange(n, dtype=torch.float64)[:, None]
        mat = torch.cos(math.pi * freq * pos) * math.sqrt(2.0 / n)
        mat[0] /= math.sqrt(2.0)
        return mat.to(device=device, dtype=dtype)


@lru_cache(maxsize=128)
def frequency_distance(size: Tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sum over the axes of (w_n)^2, w_n = n*pi/N for an axis of length N: for an (H, W) map w_n^2 + w_m^2, shaped
    (*size, 1); the decay is exp(-k * this)."""
    with torch.inference_mode(False):
        dist = torch.zeros(size, dtype=torch.float64)
        for axis, n in enumerate(size):
            shape = [1] * len(size)
            shape[axis] = n
            dist = dist + ((torch.arange(n, dtype=torch.float64) * (math.pi / n)) ** 2).view(shape)
        return dist[..., None].to(device=device, dtype=dtype)


@lru_cache(maxsize=128)
def _fft_constants(n: int, device: torch.device, dtype: torch.dtype) -> List[torch.Tensor]:
    """Index maps and twiddles of Makhoul's length-n DCT through a real FFT of length n."""
    with torch.inference_mode(False):
        half = n // 2 + 1
        order = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])
        inverse_order = torch.argsort(order)
        k = torch.arange(half, dtype=torch.float64)
        theta = math.pi * k / (2 * n)
        scale = torch.full((half,), math.sqrt(2.0 / n), dtype=torch.float64)
        scale[0] = math.sqrt(1.0 / n)
        mirror = (n - torch.arange(half)) % n           # X_{N-k}, with X_N read as 0 (masked below)
        mirror_gain = torch.full((half,), 1.0 / math.sqrt(2.0 / n), dtype=torch.float64)
        mirror_gain[0] = 0.0
        consts = (
            torch.cos(theta), torch.sin(theta), scale,                                   # forward
            torch.cos(theta) / scale, torch.sin(theta) / scale,                          # inverse, X_k
            torch.cos(theta) * mirror_gain, torch.sin(theta) * mirror_gain,              # inverse, X_{N-k}
        )
        return [order.to(device), inverse_order.to(device), mirror.to(device)] + list(
            c.to(device=device, dtype=dtype) for c in consts)


# The model reaches the caches through these. TorchScript runs them as Python, passing a tensor whose device and
# dtype select the entry (it would pass a dtype as a plain int). While torch.compile or torch.export trace, the
# constants are computed afresh: a traced value must not be cached (export traces with fake tensors).
def _cached(fn, *args):
    return fn.__wrapped__(*args) if torch.compiler.is_compiling() else fn(*args)


@torch.jit.ignore
def _dct_matrix_like(n: int, like: torch.Tensor) -> torch.Tensor:
    return _cached(dct_matrix, n, like.device, like.dtype)


@torch.jit.ignore
def _frequency_distance_like(size: List[int], like: torch.Tensor) -> torch.Tensor:
    return _cached(frequency_distance, tuple(size), like.device, like.dtype)


@torch.jit.ignore
def _fft_constants_like(n: int, like: torch.Tensor) -> List[torch.Tensor]:
    return _cached(_fft_constants, n, like.device, like.dtype)


def _along(vec: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """Reshape a 1-D tensor so that it broadcasts along ``dim`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return vec.view(shape)


def dct_fft(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal DCT-II of a real tensor along ``dim`` through one real FFT (Makhoul, 1980)."""
    n = x.shape[dim]
    order, _, _, cos, sin, scale, _, _, _, _ = _fft_constants_like(n, x)
    spec = torch.fft.rfft(x.index_select(dim, order), dim=dim)
    re, im = spec.real, spec.imag
    cos, sin, scale = _along(cos, dim, x.ndim), _along(sin, dim, x.ndim), _along(scale, dim, x.ndim)
    rot_re = re * cos + im * sin              # Re(exp(-i theta_k) V_k), k = 0 .. N//2
    rot_im = im * cos - re * sin
    low = rot_re * scale
    high = (rot_im.narrow(dim, 1, n - low.shape[dim]) * -scale.narrow(dim, 1, n - low.shape[dim])).flip(dim)
    return torch.cat([low, high], dim=dim)


def idct_fft(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`dct_fft` (orthonormal DCT-III) through one inverse real FFT."""
    n = x.shape[dim]
    _, inverse_order, mirror, _, _, _, ca, sa, cb, sb = _fft_constants_like(n, x)
    half = n // 2 + 1
    low = x.narrow(dim, 0, half)
    high = x.index_select(dim, mirror)
    ca, sa, cb, sb = (_along(ca, dim, x.ndim), _along(sa, dim, x.ndim), _along(cb, dim, x.ndim),
                      _along(sb, dim, x.ndim))
    spec = torch.complex(ca * low + sb * high, sa * low - cb * high)
    return torch.fft.irfft(spec, n=n, dim=dim).index_select(dim, inverse_order)


def dctn(x: torch.Tensor, impl: str = 'matmul', inverse: bool = False) -> torch.Tensor:
    """Orthonormal DCT-II (or its inverse) along every spatial axis of a channels-last (B, *spatial, C) tensor."""
    if x.ndim < 3:
        raise ValueError(f'dctn expects a channels-last (B, *spatial, C) tensor, got shape {list(x.shape)}')
    if impl == 'fft':
        work = x.to(torch.promote_types(x.dtype, torch.float32))  # half-precision FFTs are restricted
        for dim in range(1, x.ndim - 1):
            work = idct_fft(work, dim) if inverse else dct_fft(work, dim)
        return work.to(x.dtype)
    if impl != 'matmul':
        raise ValueError(f"dct_impl must be 'matmul' or 'fft', got '{impl}'")
    shape = x.shape
    for dim in range(1, x.ndim - 1):  # (D @) (H @) (W @): each axis as the middle one of a 3-D view, no copies
        mat = _dct_matrix_like(shape[dim], x)
        lead, trail = 1, 1
        for size in shape[:dim]:
            lead *= size
        for size in shape[dim + 1:]:
            trail *= size
        x = torch.matmul(mat.t() if inverse else mat, x.reshape(lead, shape[dim], trail)).view(shape)
    return x


@register_notrace_function
def heat_conduction(x: torch.Tensor, decay: torch.Tensor, impl: str = 'matmul') -> torch.Tensor:
    """u(t) = IDCT(DCT(x) * decay) along the spatial axes of a channels-last (B, *spatial, C) tensor, with a
    (*spatial, C) decay map."""
    return dctn(dctn(x, impl) * decay, impl, inverse=True)


@register_notrace_function
def heat_decay(k: torch.Tensor) -> torch.Tensor:
    """The decay map exp(-(w_n^2 + w_m^2 [+ w_d^2]) * k) of a diffusivity map k (*spatial, C) >= 0 at its own size."""
    return torch.exp(-_frequency_distance_like(k.shape[:-1], k) * k)
