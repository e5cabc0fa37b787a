"""tools/analysis_tools/benchmark.py --step-profile sorts a profiled training step's operations by kind: every DCT
product of vHeat's heat conduction, and its convolutions, land where the table says."""
from collections import Counter

import torch
import torch.nn.functional as F

from classification.models import vHeat
from tools.analysis_tools.benchmark import _op_kind


def test_every_dct_product_and_convolution_of_a_training_step_is_found():
    """Two stages at 64x64 (16x16 and 8x8 maps), a block each: each block's forward transforms u and back, its
    backward the gradient and back, each along two axes: 8 DCT products a block. Backward: three dense
    convolutions (the stem's two, the downsampling) and a depthwise one per block."""
    torch.manual_seed(0)
    model = vHeat(depths=[1, 1], dims=8, num_classes=10, img_size=64)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    with torch.profiler.profile(record_shapes=True) as prof:
        F.cross_entropy(model(x), y).backward()
    kinds = Counter(_op_kind(event.name, event.input_shapes, [16, 8]) for event in prof.events())
    assert kinds['DCT products'] == 16
    assert kinds['dense convolutions, backward'] == 3
    assert kinds['depthwise convolutions, backward'] == 2
    assert kinds['other matrix products'] > 0
