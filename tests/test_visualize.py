"""The numbers behind the scaling plot and the pictures: heat strip, ERF maps, memory and exponent fits."""
import numpy as np
import pytest
import timm
import torch

import classification.models  # noqa: F401
from classification.core.memory import peak_memory
from classification.data.images import SAMPLE_IMAGE as DEFAULT_IMAGE
from classification.data.images import load_float_image as load_image
from tools.analysis_tools.benchmark import growth_exponent
from tools.visualization.visualize_erf import crops, effective_receptive_field
from tools.visualization.visualize_heat import conduct, point_source, two_sources


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
def test_point_source_spreads_as_gaussian_and_conserves_heat(impl):
    kts = [0, 1, 4, 16]
    maps = conduct(point_source(64, 64), kts, impl)[..., 0]
    ys, xs = torch.meshgrid(torch.arange(64.), torch.arange(64.), indexing='ij')
    variances = []
    for kt, u in zip(kts, maps):
        assert u.sum().item() == pytest.approx(1.0, abs=1e-9)  # Neumann: no heat leaves the image
        assert u.min().item() > -1e-5 * u.max().item()  # only spectral ringing
        var_y = (u * (ys - (ys * u).sum()) ** 2).sum().item()
        var_x = (u * (xs - (xs * u).sum()) ** 2).sum().item()
        assert var_y == pytest.approx(2 * kt, rel=1e-3, abs=1e-9)  # heat kernel: variance 2kt per axis
        assert var_x == pytest.approx(2 * kt, rel=1e-3, abs=1e-9)
        variances.append(var_x)
    assert variances == sorted(variances)


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
def test_point_source_spreads_as_a_3d_gaussian_and_conserves_heat(impl):
    """The picture of the 3-D operator: variance 2kt along each of the three axes, no heat lost."""
    kts = [0, 1, 4]
    volumes = conduct(point_source(28, 32, 26), kts, impl)[..., 0]
    grid = torch.meshgrid(torch.arange(28.), torch.arange(32.), torch.arange(26.), indexing='ij')
    for kt, u in zip(kts, volumes):
        assert u.sum().item() == pytest.approx(1.0, abs=1e-9)
        for axis in grid:
            mean = (axis * u).sum()
            assert (u * (axis - mean) ** 2).sum().item() == pytest.approx(2 * kt, rel=1e-3, abs=1e-9)
    spread = conduct(two_sources(24), [8])[0, ..., 0]
    assert spread.sum().item() == pytest.approx(two_sources(24).sum().item(), rel=1e-9)
    assert spread[0].max() > 1e-4 * spread.max()  # heat reaches the first slice, where none started


def test_photo_strip_keeps_each_channels_heat_and_smooths():
    image = load_image(DEFAULT_IMAGE)
    strip = conduct(image, [0, 8, 128])
    torch.testing.assert_close(strip[0], image)
    totals = strip.sum(dim=(1, 2))
    torch.testing.assert_close(totals, image.sum(dim=(0, 1)).expand_as(totals))
    roughness = [(u[1:] - u[:-1]).abs().mean().item() for u in strip]
    assert roughness[0] > roughness[1] > roughness[2]


@pytest.fixture(scope='module')
def vheat_erfs():
    torch.manual_seed(0)
    model = timm.create_model('vheat_tiny').eval()
    images = crops(load_image(DEFAULT_IMAGE), 2, 64)
    return {stage: effective_receptive_field(model, images, stage) for stage in (1, 3)}


def test_erf_is_a_normalised_map_of_the_input_size_centred_on_the_output_pixel(vheat_erfs):
    erf = vheat_erfs[1]  # stride 8: the centre output pixel (4, 4) of 8x8, padded convolutions centre it near 32
    assert erf.shape == (64, 64)
    assert erf.min().item() >= 0
    assert erf.sum().item() == pytest.approx(1.0, rel=1e-5)
    peak = np.unravel_index(int(erf.argmax()), erf.shape)
    assert all(24 <= p < 40 for p in peak)
    coords = torch.arange(64.)
    centre = ((erf.sum(1) * coords).sum().item(), (erf.sum(0) * coords).sum().item())
    assert all(abs(c - 32) < 2 for c in centre)


def test_vheat_erf_reaches_the_whole_image(vheat_erfs):
    erf = vheat_erfs[3]
    corners = erf[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 1e-3 * erf.max()).all()  # heat conduction is global: even the corners get gradient


def test_peak_memory_sees_a_temporary_allocation():
    size = 64 * 2 ** 20
    measured = peak_memory(lambda: torch.ones(size // 4, dtype=torch.float32).sum(), torch.device('cpu'))
    assert 0.9 * size < measured < 1.5 * size


def test_growth_exponent_recovers_a_power_law():
    pixels = [224 ** 2, 512 ** 2, 1024 ** 2]
    assert growth_exponent(pixels, [3 * p ** 1.5 for p in pixels]) == pytest.approx(1.5)
