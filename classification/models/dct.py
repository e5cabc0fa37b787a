"""Orthonormal 2-D DCT-II / DCT-III on channels-last tensors, and the heat-conduction core built on them.

Two interchangeable implementations of the transform along the spatial axes of a (B, H, W, C) tensor:
- ``matmul``: multiplies by the N x N DCT matrix, O(N) work per output element; fastest for the
  small feature maps of a classifier (56x56 and below at 224).
- ``fft``: Makhoul's algorithm, one real FFT of length N per line, O(log N) per element, for large maps
  on devices where it pays off.
``choose_dct_impl`` picks between them from the map size and the device (see ``FFT_MIN_SIZE``).
Both agree with ``scipy.fft.dct(norm="ortho")``.

Constant tensors (DCT matrices, FFT twiddles, the frequency-distance map of the decay) are cached per
(size, device, dtype) and always created outside inference mode, so a cache filled under
``torch.inference_mode()`` can still be used by a training step later.
"""
import math
from functools import lru_cache
from typing import Tuple

import torch

DCT_IMPLS = ('auto', 'matmul', 'fft')

# Smallest feature-map side from which 'auto' takes the FFT path, per device type. On CPU (2 threads,
# float32) the FFT path was 3.5x to 5x slower than the matrix path at every side from 7 to 256
# (``tools/benchmark.py --dct-sweep``), so CPU always multiplies. The CUDA value is an estimate that has not
# been measured in this repository: run the sweep on your GPU and adjust it.
FFT_MIN_SIZE = {'cpu': None, 'cuda': 128}


def choose_dct_impl(height: int, width: int, impl: str = 'auto', device: torch.device = torch.device('cpu')) -> str:
    """The DCT implementation for an (height, width) map on ``device``: ``impl`` itself unless it is 'auto'."""
    if impl not in DCT_IMPLS:
        raise ValueError(f'dct_impl must be one of {DCT_IMPLS}, got {impl!r}')
    if impl != 'auto':
        return impl
    threshold = FFT_MIN_SIZE.get(device.type)
    return 'fft' if threshold is not None and min(height, width) >= threshold else 'matmul'


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
def frequency_distance(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(w_n^2 + w_m^2) with w_n = n*pi/H, w_m = m*pi/W, shaped (H, W, 1): the decay is exp(-k * this)."""
    with torch.inference_mode(False):
        w_n = torch.arange(height, dtype=torch.float64) * (math.pi / height)
        w_m = torch.arange(width, dtype=torch.float64) * (math.pi / width)
        dist = w_n[:, None] ** 2 + w_m[None, :] ** 2
        return dist[:, :, None].to(device=device, dtype=dtype)


@lru_cache(maxsize=128)
def _fft_constants(n: int, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
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
        return (order.to(device), inverse_order.to(device), mirror.to(device)) + tuple(
            c.to(device=device, dtype=dtype) for c in consts)


def _along(vec: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """Reshape a 1-D tensor so that it broadcasts along ``dim`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return vec.view(shape)


def dct_fft(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal DCT-II of a real tensor along ``dim`` through one real FFT (Makhoul, 1980)."""
    n = x.shape[dim]
    order, _, _, cos, sin, scale, *_ = _fft_constants(n, x.device, x.dtype)
    spec = torch.fft.rfft(x.index_select(dim, order), dim=dim)
    re, im = spec.real, spec.imag
    cos, sin, scale = (_along(c, dim, x.ndim) for c in (cos, sin, scale))
    rot_re = re * cos + im * sin              # Re(exp(-i theta_k) V_k), k = 0 .. N//2
    rot_im = im * cos - re * sin
    low = rot_re * scale
    high = (rot_im.narrow(dim, 1, n - low.shape[dim]) * -scale.narrow(dim, 1, n - low.shape[dim])).flip(dim)
    return torch.cat([low, high], dim=dim)


def idct_fft(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`dct_fft` (orthonormal DCT-III) through one inverse real FFT."""
    n = x.shape[dim]
    _, inverse_order, mirror, _, _, _, ca, sa, cb, sb = _fft_constants(n, x.device, x.dtype)
    half = n // 2 + 1
    low = x.narrow(dim, 0, half)
    high = x.index_select(dim, mirror)
    ca, sa, cb, sb = (_along(c, dim, x.ndim) for c in (ca, sa, cb, sb))
    spec = torch.complex(ca * low + sb * high, sa * low - cb * high)
    return torch.fft.irfft(spec, n=n, dim=dim).index_select(dim, inverse_order)


def dct2d(x: torch.Tensor, impl: str = 'matmul', inverse: bool = False) -> torch.Tensor:
    """2-D orthonormal DCT-II (or its inverse) over the spatial axes of a channels-last (B, H, W, C) tensor."""
    if x.ndim != 4:
        raise ValueError(f'dct2d expects a (B, H, W, C) tensor, got shape {tuple(x.shape)}')
    batch, height, width, channels = x.shape
    if impl == 'fft':
        transform = idct_fft if inverse else dct_fft
        work = x.to(torch.promote_types(x.dtype, torch.float32))  # half-precision FFTs are restricted
        return transform(transform(work, 1), 2).to(x.dtype)
    if impl != 'matmul':
        raise ValueError(f"dct2d impl must be 'matmul' or 'fft', got {impl!r}")
    mat_h = dct_matrix(height, x.device, x.dtype)
    mat_w = dct_matrix(width, x.device, x.dtype)
    if inverse:
        mat_h, mat_w = mat_h.t(), mat_w.t()
    x = torch.matmul(mat_h, x.reshape(batch, height, width * channels)).view(batch, height, width, channels)
    return torch.matmul(mat_w, x)


def heat_conduction(x: torch.Tensor, decay: torch.Tensor, impl: str = 'auto') -> torch.Tensor:
    """u(t) = IDCT2D(DCT2D(x) * decay) for channels-last x (B, H, W, C) and a (H, W, C) decay map."""
    impl = choose_dct_impl(x.shape[1], x.shape[2], impl, x.device)
    spectrum = dct2d(x, impl)
    tracked = torch.is_grad_enabled() and (spectrum.requires_grad or decay.requires_grad)
    spectrum = spectrum * decay if tracked else spectrum.mul_(decay)
    return dct2d(spectrum, impl, inverse=True)


def heat_conduction_(u: torch.Tensor, decay: torch.Tensor, band_bytes: int) -> torch.Tensor:
    """:func:`heat_conduction` in place (matmul path, no autograd), band by band, for maps too large for cache.

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
