"""vHeat as a library others build on: heat conduction as a layer in other networks (trained on real images),
vHeat weights into a model that holds one, and vHeat under torchvision's detectors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from timm.models._manipulate import adapt_input_conv

import vheat
from classification.models.vheat import rename_official_key, resize_freq_embed
from conftest import FIXTURES, ROOT

LAYOUT = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))


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


def _train(model: nn.Module, prepare, steps: int = 200, batch: int = 32):
    """AdamW on the digits; (mean loss of the first 20 steps, of the last 20, held-out top-1)."""
    (x, y), (x_val, y_val) = _digits(prepare.size)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    losses = []
    model.train()
    for step in range(steps):
        index = torch.randint(len(y), (batch,))
        loss = F.cross_entropy(model(prepare(x[index])), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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
    """The same network with and without heat conduction, a few hundred steps each on the digits: with the layer
    the loss falls and the held-out accuracy is that of a working classifier (both figures printed, for the docs)."""
    build = _resnet18 if network == 'resnet18' else (lambda with_heat: RowModel(with_heat))
    prepare = _prepare(24, True) if network == 'resnet18' else _prepare(16, False)
    steps = 200 if network == 'resnet18' else 500  # the sequence model is 60 times cheaper a step
    results = {}
    for with_heat in (False, True):
        torch.manual_seed(0)
        results[with_heat] = _train(build(with_heat), prepare, steps)
    with capsys.disabled():
        print(f'\n{network}: held-out top-1 without the layer {results[False][2]:.4f}, with it {results[True][2]:.4f}; '
              f'loss with it {results[True][0]:.3f} -> {results[True][1]:.3f}')
    first, last, accuracy = results[True]
    assert last < 0.5 * first
    assert accuracy >= 0.85
    assert accuracy >= results[False][2] - 0.05


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
            assert (torch.jit.script(layer)(x) - eager).abs().max() <= 1e-4
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


class SARClassifier(nn.Module):
    """A user's network around vHeat-T: 512 px, one input channel, five classes."""

    def __init__(self):
        super().__init__()
        self.encoder = timm.create_model('vheat_tiny', img_size=512, in_chans=1, num_classes=5)


def _official_tiny():
    """Random weights in the official vHeat-T's training layout (its names and shapes)."""
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) for k, shape in
            LAYOUT['vHeat_tiny']['state_dict_train_mode'].items()}


def _ours_tiny():
    torch.manual_seed(1)
    return timm.create_model('vheat_tiny').state_dict()


def _save(weights, path, prefix):
    wrapped = {prefix + k: v for k, v in weights.items()}
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in wrapped.items()}, str(path))
    else:
        torch.save({'state_dict': wrapped, 'epoch': 3}, path)
    return str(path)


def _expected(weights):
    """The source weights under our names, 1x1-convolution MLP weights as Linear weights."""
    out = {}
    for key, value in weights.items():
        key = rename_official_key(key)
        out[key] = value.flatten(1) if key.endswith(('mlp.fc1.weight', 'mlp.fc2.weight')) and value.ndim == 4 \
            else value
    return out


@pytest.mark.parametrize('layout,suffix', [('official', '.pth'), ('ours', '.pth'), ('ours', '.safetensors'),
                                           ('official', '.safetensors')])
def test_weights_into_a_model_that_holds_vheat(tmp_path, caplog, layout, suffix):
    """A vHeat-T file saved inside a wrapper (``encoder.``) into a SARClassifier: every copied tensor equal, the
    frequency embeddings resized 56 -> 128, the stem adapted to one channel, the 1000-class head skipped, one line
    saying so."""
    weights = _official_tiny() if layout == 'official' else _ours_tiny()
    path = _save(weights, tmp_path / f'wrapped{suffix}', 'encoder.')
    model = SARClassifier()
    head = {k: v.clone() for k, v in model.encoder.head.fc.state_dict().items()}
    with caplog.at_level('INFO', logger='classification.models.pretrained'):
        report = vheat.load_pretrained(model, path)
    expected, own = _expected(weights), model.encoder.state_dict()
    copied = [k for k in own if k in expected and 'freq_embed' not in k and k != 'stem.conv1.weight'
              and not k.startswith('head.fc.')]
    assert len(copied) == len(own) - 4 - 2 - 1  # 4 embeddings, the new head, the stem
    assert all(torch.equal(own[k], expected[k]) for k in copied)
    for i, size in enumerate((128, 64, 32, 16)):
        key = f'stages.{i}.freq_embed'
        assert torch.equal(own[key], resize_freq_embed(expected[key], (size, size), 'bicubic'))
    assert torch.equal(own['stem.conv1.weight'], adapt_input_conv(1, expected['stem.conv1.weight']))
    assert all(torch.equal(model.encoder.head.fc.state_dict()[k], v) for k, v in head.items())
    line = str(report)
    assert line.startswith(f"loaded {len(own) - 2} tensors of {path} (prefix 'encoder.') into encoder; resized "
                           'stages.0.freq_embed 56x56x96->128x128x96 (bicubic), ')
    assert 'adapted stem.conv1.weight 3->1 input channels' in line
    assert 'skipped head.fc.weight 1000x768, head.fc.bias 1000' in line
    assert line.endswith('newly initialised head.fc.weight, head.fc.bias')
    assert caplog.messages == [line]


def test_wrapper_prefixes_found_or_named_and_zero_resize(tmp_path):
    weights = _ours_tiny()
    path = _save(weights, tmp_path / 'ddp.pth', 'module.backbone.')
    model = timm.create_model('vheat_tiny', img_size=448)
    report = vheat.load_pretrained(model, path, freq_embed_resize='zero')
    assert report.prefix == 'module.backbone.' and not report.skipped and not report.adapted
    assert torch.equal(model.stages[0].freq_embed[:56, :56], weights['stages.0.freq_embed'])
    assert not model.stages[0].freq_embed[56:].any()
    two = tmp_path / 'two.pth'
    torch.save({**{'student.' + k: v for k, v in weights.items()}, **{'teacher.' + k: v for k, v in weights.items()}},
               two)
    with pytest.raises(vheat.IncompatibleCheckpointError, match=r"holds several vHeat models \('student.', "
                                                                r"'teacher.'\); name one with prefix="):
        vheat.load_pretrained(model, str(two))
    assert vheat.load_pretrained(model, str(two), prefix='teacher.').prefix == 'teacher.'
    with pytest.raises(vheat.IncompatibleCheckpointError, match=r"no key starts with 'encoder.'"):
        vheat.load_pretrained(model, str(two), prefix='encoder.')
    small = tmp_path / 'small.pth'
    torch.save(timm.create_model('vheat_small').state_dict(), small)
    with pytest.raises(vheat.IncompatibleCheckpointError,
                       match=r'small.pth does not fit vHeat \(another architecture or size\?\): unexpected \(264\): '
                             r'stages.0.blocks.0.gamma1'):
        vheat.load_pretrained(model, str(small))
    with pytest.raises(ValueError, match=r'holds 0 vHeat modules \(none\); name one with target='):
        vheat.load_pretrained(nn.Linear(2, 2), path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'encoder.stem.conv1.weight': torch.zeros(1)}, 'payload': Payload()}, path)
    with pytest.raises(vheat.UnsafeCheckpointError, match='refusing to load .*evil.pth: it needs .*system'):
        vheat.load_pretrained(SARClassifier(), str(path))
    assert not marker.exists()


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


def test_timm_hub_conventions_round_trip_and_feed_load_pretrained(tmp_path):
    """timm's save_for_hf / ``local-dir:`` round-trip a vHeat; its model.safetensors loads into a wrapped vHeat."""
    torch.manual_seed(0)
    model = timm.create_model('vheat_tiny', num_classes=5).eval()
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    again = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    report = vheat.load_pretrained(SARClassifier(), str(tmp_path / 'model.safetensors'))
    assert report.prefix == '' and not report.skipped and report.adapted == [
        'stem.conv1.weight 3->1 input channels']
