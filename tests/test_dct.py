"""The DCT paths against scipy, and the heat-conduction core against an independent heat-equation solver."""
import math

import numpy as np
import pytest
import scipy.fft
import torch

from classification.models.dct import dctn, frequency_distance, heat_conduction


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
@pytest.mark.parametrize('height,width', [(1, 1), (2, 3), (7, 7), (14, 9), (56, 56), (57, 31), (128, 130)])
def test_dct_of_maps_matches_scipy(impl, height, width):
    x = torch.randn(2, height, width, 5)
    expected = scipy.fft.dctn(x.double().numpy(), axes=(1, 2), norm='ortho')
    got = dctn(x, impl)
    assert np.abs(got.double().numpy() - expected).max() <= 1e-5
    back = dctn(got, impl, inverse=True)
    assert (back - x).abs().max() <= 1e-5


def test_dct_rejects_bad_input():
    with pytest.raises(ValueError, match='channels-last'):
        dctn(torch.randn(3, 8))
    with pytest.raises(ValueError, match='dct_impl'):
        dctn(torch.randn(1, 8, 8, 2), 'fast')


def _neumann_heat_fd(source, alpha_t, refine=7):
    """Explicit finite differences of u_t = laplacian(u) (2-D or 3-D) on a grid ``refine`` times finer, with
    reflecting walls.

    ``source(*coords)`` is evaluated at the fine cell centres (pixel units, the map spans [0, N] along each axis of
    ``source.shape``); the solution is returned at the coarse pixel centres, fine cell centres for odd ``refine``.
    """
    h = 1.0 / refine
    axes = [(np.arange(n * refine) + 0.5) * h for n in source.shape]
    u = source(*np.meshgrid(*axes, indexing='ij'))
    dt = 0.4 / len(source.shape) * h * h  # within the explicit scheme's stability limit h^2 / (2 * dims)
    steps = int(math.ceil(alpha_t / dt))
    dt = alpha_t / steps
    inner = (slice(1, -1),) * u.ndim
    for _ in range(steps):
        p = np.pad(u, 1, mode='edge')  # ghost cells mirror the boundary cells: zero normal flux
        lap = -2 * u.ndim * u
        for axis in range(u.ndim):
            for shift in (slice(0, -2), slice(2, None)):
                lap = lap + p[inner[:axis] + (shift,) + inner[axis + 1:]]
        u = u + dt / (h * h) * lap
    centre = refine // 2
    return u[(slice(centre, None, refine),) * u.ndim]


class _Bump:
    """A smooth heat source: an off-centre Gaussian plus a constant floor, on a (24, 20) map or a volume."""

    def __init__(self, shape=(24, 20), centre=(9.0, 12.0), sigma=2.5):
        self.shape, self.centre, self.sigma = shape, centre, sigma

    def __call__(self, *coords):
        return 0.5 + np.exp(-sum((c - m) ** 2 for c, m in zip(coords, self.centre)) / (2 * self.sigma ** 2))

    def at_pixels(self):
        return self(*np.meshgrid(*[np.arange(n) + 0.5 for n in self.shape], indexing='ij'))


def _conduct(bump, k, impl, scale=1.0):
    u0 = torch.tensor(bump.at_pixels(), dtype=torch.float64)[None, ..., None]
    decay = torch.exp(-k * frequency_distance(bump.shape, u0.device, u0.dtype) * scale)
    return u0, heat_conduction(u0, decay, impl)[0, ..., 0].numpy()


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
@pytest.mark.parametrize('k', [0.5, 4.0])
def test_heat_core_solves_the_neumann_heat_equation(impl, k):
    bump = _Bump()
    u0, got = _conduct(bump, k, impl)
    peak = bump.at_pixels().max() - 0.5
    assert np.abs(got - _neumann_heat_fd(bump, alpha_t=k)).max() <= 2e-3 * peak
    # the operator really diffuses: the peak falls and the total heat stays
    assert got.max() < bump.at_pixels().max() - 0.05 * peak
    assert got.sum() == pytest.approx(u0.sum().item(), rel=1e-9)


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
@pytest.mark.parametrize('k', [0.5, 3.0])
def test_heat_core_solves_the_neumann_heat_equation_in_3d(impl, k):
    """exp(-(w_d^2 + w_h^2 + w_w^2) k) in a (10, 12, 9) volume against 3-D finite differences."""
    bump = _Bump(shape=(10, 12, 9), centre=(4.0, 7.0, 4.5), sigma=1.8)
    u0, got = _conduct(bump, k, impl)
    peak = bump.at_pixels().max() - 0.5
    assert np.abs(got - _neumann_heat_fd(bump, alpha_t=k, refine=5)).max() <= 4e-3 * peak
    assert got.max() < bump.at_pixels().max() - 0.05 * peak
    assert got.sum() == pytest.approx(u0.sum().item(), rel=1e-9)


@pytest.mark.parametrize('bump,refine', [(_Bump(), 7), (_Bump(shape=(10, 12, 9), centre=(4.0, 7.0, 4.5), sigma=1.8), 5)])
def test_heat_core_wrong_frequencies_do_not_match(bump, refine):
    """The comparisons above can fail: w_n = n*pi/(2N) instead of n*pi/N misses the reference."""
    _, got = _conduct(bump, 3.0, 'matmul', scale=0.25)
    assert np.abs(got - _neumann_heat_fd(bump, alpha_t=3.0, refine=refine)).max() > 2e-2


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
@pytest.mark.parametrize('shape', [(1, 1, 1), (5, 7, 6), (16, 9, 12)])
def test_dct_along_every_axis_of_volumes_matches_scipy(impl, shape):
    x = torch.randn(2, *shape, 3)
    expected = scipy.fft.dctn(x.double().numpy(), axes=(1, 2, 3), norm='ortho')
    got = dctn(x, impl)
    assert np.abs(got.double().numpy() - expected).max() <= 1e-5
    assert (dctn(got, impl, inverse=True) - x).abs().max() <= 1e-5


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
def test_a_volume_of_depth_one_is_the_2d_operator(impl):
    x, k = torch.randn(2, 9, 11, 4), torch.rand(9, 11, 4) * 3
    flat = heat_conduction(x, torch.exp(-frequency_distance((9, 11), x.device, x.dtype) * k), impl)
    deep = heat_conduction(x[:, None], torch.exp(-frequency_distance((1, 9, 11), x.device, x.dtype) * k[None]), impl)
    assert torch.equal(deep[:, 0], flat)
