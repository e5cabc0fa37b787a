"""vHeat as a library others build on, with what the library itself does not need: heat conduction as a layer in
other networks (trained on real images), traced, scripted, compiled and exported to ONNX, vHeat under
torchvision's detectors, and the checkout's ``vheat``. (The library's own tests, on torch, timm and pytest alone, are
in tests/library.)"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits

import vheat
from conftest import ROOT, jit_script


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


def _digits(size: int):
    """scikit-learn's digits (real scans) at ``size`` x ``size``, in [0, 1]: the 80/20 split of the demo."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    images = F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(order))
    return (images[order[:cut]], labels[order[:cut]]), (images[order[cut:]], labels[order[cut:]])


def _train(model: nn.Module, prepare, steps: int, batch: int = 32):
    """AdamW (fused) with a cosine decay of the learning rate on the digits; (mean loss of the first 20 steps, of
    the last 20, held-out top-1)."""
    (x, y), (x_val, y_val) = _digits(prepare.size)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    model.train()
    for step in range(steps):
        index = torch.randint(len(y), (batch,))
        loss = F.cross_entropy(model(prepare(x[index])), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(prepare(x_val)).argmax(1) == y_val).float().mean().item()
    return float(np.mean(losses[:20])), float(np.mean(losses[-20:])), accuracy


def _resnet18(with_heat: bool) -> nn.Module:
    """torchvision's ResNet-18, each stage-3 block followed by a residual HeatConduction2d (256 channels)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    if with_heat:
        net.layer3 = nn.Sequential(*(nn.Sequential(block, Residual(vheat.HeatConduction2d(256))) for block in
                                     net.layer3))
    return net


class RowModel(nn.Module):
    """A digit read row by row: each row a token, ``mixers`` between the tokens (HeatConduction1d, or none), then
    the mean over the rows."""

    def __init__(self, with_heat: bool, width: int = 16, dim: int = 64):
        super().__init__()
        self.embed = nn.Linear(width, dim)
        self.mixers = nn.ModuleList(Residual(vheat.HeatConduction1d(dim, embed_size=width)) if with_heat else
                                    nn.Identity() for _ in range(2))
        self.mlps = nn.ModuleList(Residual(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(),
                                                         nn.Linear(2 * dim, dim))) for _ in range(2))
        self.head = nn.Linear(dim, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images[:, 0])                  # (B, rows, dim)
        for mixer, mlp in zip(self.mixers, self.mlps):
            x = mlp(mixer(x.transpose(1, 2)).transpose(1, 2))
        return self.head(x.mean(1))


def _prepare(size, to_rgb):
    def prepare(x):
        return x.expand(-1, 3, -1, -1) if to_rgb else x
    prepare.size = size
    return prepare


@pytest.mark.parametrize('network', ['resnet18', 'rows'])
def test_the_layer_trains_in_other_networks_on_real_images(network, capsys):
    """The same network with and without heat conduction, trained alike on the digits: with the layer the loss
    falls and the held-out accuracy is that of a working classifier, ResNet-18's within the spread of the network
    without it, and the row model's (whose rows meet only through the layer) clearly above it. Measured with three
    sampling seeds: ResNet-18 97.2-98.1% with the layer and without; the row model 92.8-94.2% with it, 84.7-85.3%
    without (ResNet-18 at 80 steps; 120 gave the same range). The learning rate decays to zero, so the last steps do
    not decide the result (at a constant rate the accuracy of ResNet-18 ranged over 84-96% with the seed)."""
    build = _resnet18 if network == 'resnet18' else (lambda with_heat: RowModel(with_heat))
    prepare = _prepare(24, True) if network == 'resnet18' else _prepare(16, False)
    steps = 80 if network == 'resnet18' else 500  # the sequence model is 60 times cheaper a step
    results = {}
    for with_heat in (False, True):
        torch.manual_seed(0)
        results[with_heat] = _train(build(with_heat), prepare, steps)
    with capsys.disabled():
        print(f'\n{network}: held-out top-1 without the layer {results[False][2]:.4f}, with it {results[True][2]:.4f}; '
              f'loss with it {results[True][0]:.3f} -> {results[True][1]:.3f}')
    first, last, accuracy = results[True]
    assert last < 0.5 * first
    assert accuracy >= 0.9
    if network == 'resnet18':
        assert accuracy >= results[False][2] - 0.02
    else:
        assert accuracy >= results[False][2] + 0.04


def test_the_layer_traces_scripts_compiles_and_exports(tmp_path):
    """torch.fx, TorchScript, torch.compile(fullgraph=True) and ONNX (onnxruntime) against eager, <= 1e-4."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    torch.manual_seed(0)
    for layer, x in ((vheat.HeatConduction2d(16).eval(), torch.randn(2, 16, 11, 7)),
                     (vheat.HeatConduction1d(16).eval(), torch.randn(2, 16, 13)),
                     (vheat.HeatConduction3d(16, channels_last=True).eval(), torch.randn(2, 5, 6, 3, 16))):
        with torch.no_grad():
            eager = layer(x)
            tracer = torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions()))
            tracer.is_leaf_module = lambda m, name: type(m) in get_notrace_modules() or \
                torch.fx.Tracer.is_leaf_module(tracer, m, name)
            traced = torch.fx.GraphModule(layer, tracer.trace(layer))
            assert (traced(x) - eager).abs().max() <= 1e-4
            assert (jit_script(layer)(x) - eager).abs().max() <= 1e-4
            torch._dynamo.reset()  # inductor for the 2-D layer (about 20 s here), the graph capture for the others
            backend = 'inductor' if isinstance(layer, vheat.HeatConduction2d) else 'aot_eager'
            assert (torch.compile(layer, fullgraph=True, backend=backend)(x) - eager).abs().max() <= 1e-4
    onnxruntime = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    layer, x = vheat.HeatConduction2d(16).eval(), torch.randn(2, 16, 11, 7)
    path = str(tmp_path / 'heat.onnx')
    torch.onnx.export(layer, (x,), path, dynamo=True, external_data=False)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - layer(x).numpy()).max() <= 1e-4


def test_torchvision_faster_rcnn_with_a_vheat_fpn_backbone():
    """vHeat-T under torchvision's FPN in FasterRCNN: three training steps on a generated image with two boxes
    (finite losses, the weights move), then predictions in eval mode."""
    from torchvision.models.detection import FasterRCNN
    torch.manual_seed(0)
    detector = FasterRCNN(vheat.fpn_backbone('vheat_tiny'), num_classes=3, min_size=128, max_size=160)
    image = torch.rand(3, 128, 160) * 0.1
    image[:, 20:60, 30:90] = 0.9
    image[0, 80:120, 100:150] = 1.0
    target = {'boxes': torch.tensor([[30., 20., 90., 60.], [100., 80., 150., 120.]]), 'labels': torch.tensor([1, 2])}
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    stem = detector.backbone.body.model.stem.conv1.weight.detach().clone()
    detector.train()
    for _ in range(3):
        losses = detector([image], [target])
        assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert not torch.equal(detector.backbone.body.model.stem.conv1.weight, stem)
    detector.eval()
    with torch.no_grad():
        prediction = detector([image])[0]
    assert set(prediction) == {'boxes', 'labels', 'scores'} and prediction['boxes'].shape[1:] == (4,)
    features = detector.backbone(image[None])
    assert [(k, v.shape[-2:]) for k, v in features.items()] == [
        ('0', (32, 40)), ('1', (16, 20)), ('2', (8, 10)), ('3', (4, 5)), ('pool', (2, 3))]


def test_import_vheat_is_the_checkout_library_once():
    """In the checkout (the editable install of tools/install.sh), ``vheat`` and ``classification.models`` are one
    set of modules, whichever is imported first, and timm is told of each model once."""
    script = ('import warnings\nwarnings.simplefilter("always")\n'
              'with warnings.catch_warnings(record=True) as caught:\n'
              '    import {first}, {second}\n'
              'import classification.models, timm, vheat, vheat.layers, vheat.vheat\n'
              'assert vheat is classification.models and vheat.vHeat is classification.models.vHeat\n'
              'assert vheat.layers is classification.models.layers and vheat.vheat.vHeat is vheat.vHeat\n'
              'assert not [w for w in caught if "Overwriting" in str(w.message)], [str(w.message) for w in caught]\n'
              'print(vheat.__file__, timm.is_model("vheat_tiny"))')
    for first, second in (('vheat', 'classification.models'), ('classification.models', 'vheat')):
        result = subprocess.run([sys.executable, '-c', script.format(first=first, second=second)], cwd='/',
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == [os.path.join(ROOT, 'classification', 'models', '__init__.py'), 'True']
