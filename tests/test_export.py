"""vHeat under torch.compile (fullgraph) and exported to ONNX, against eager PyTorch."""
import os
import subprocess
import sys

import pytest
import torch

from classification.models import vHeat
from conftest import ROOT

# two stages cover every module (stem, blocks, downsampling, head); each further stage only adds kernels
# for inductor to generate and compile, about 30 s each on two CPU cores
TINY = dict(depths=[1, 2], dims=8, num_classes=10, img_size=64, post_norm=True, layer_scale=0.1)


def _tiny_model():
    torch.manual_seed(0)
    return vHeat(**TINY, drop_path_rate=0.0).eval()


def _inference_matches_eager(model, compiled, sizes):
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(2, 3, *size)
            assert (compiled(x) - model(x)).abs().max() <= 1e-4, size


def _training_step_matches_eager(model, compiled, size):
    """The gradients of every parameter after one training step."""
    model.train()
    x, y = torch.randn(2, 3, *size), torch.tensor([1, 7])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.nn.functional.cross_entropy(compiled(x), y).backward()
    for name, param in model.named_parameters():
        assert (param.grad - eager[name]).abs().max() <= 1e-4, name


def test_torch_compile_captures_one_graph_for_every_size():
    """fullgraph=True, dynamic=True: dynamo captures the whole model once with symbolic sizes, and that one graph
    serves 96x128 and 256x320 (and a training step; at the embeddings' own 64x64, which need no resizing, it
    would specialise). Checked with the eager backend: inductor cannot lower the training graph's symbolic
    spatial sizes yet (below)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = _tiny_model()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend='eager')
    _inference_matches_eager(model, compiled, [(96, 128), (256, 320)])
    _training_step_matches_eager(model, compiled, (96, 128))
    assert counters['stats']['unique_graphs'] == 2  # one inference graph, one training graph


def test_torch_compile_inductor_matches_eager_in_inference_and_training(monkeypatch, tmp_path):
    """The default backend, compiled here, not taken from inductor's on-disk cache of an earlier run: one
    inference graph with symbolic sizes (dynamic=True) serves 96x128 and 256x320 (the frequency embeddings
    resized, as downstream), and a training step at the model's own 64x64 (as ImageNet training) compiles with
    dynamic=False: a training graph with symbolic spatial sizes does not lower in torch 2.14.1 ("cannot determine
    truth value of Relational", pytorch/pytorch#185510)."""
    from torch._dynamo.utils import counters
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))
    torch._dynamo.reset()
    counters.clear()
    model = _tiny_model()
    _inference_matches_eager(model, torch.compile(model, fullgraph=True, dynamic=True), [(96, 128), (256, 320)])
    assert counters['stats']['unique_graphs'] == 1
    _training_step_matches_eager(model, torch.compile(model, fullgraph=True, dynamic=False), (64, 64))


def test_onnx_export_matches_pytorch(tmp_path):
    """tools/deployment/export_onnx.py: inference layout, dynamic batch, checked by onnxruntime against PyTorch."""
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    torch.manual_seed(0)
    model = vHeat(**TINY)
    checkpoint = tmp_path / 'tiny.pth'
    torch.save({'model': model.state_dict()}, checkpoint)
    out = tmp_path / 'tiny.onnx'
    args = [f'{k}={v}' for k, v in dict(depths='1,2', dims=8, num_classes=10, post_norm=True,
                                       layer_scale=0.1).items()]
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'deployment', 'export_onnx.py'),
                             '--checkpoint', str(checkpoint), '--img-size', '64', '--out', str(out),
                             '--check-batch', '3', '--model-args', *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    model.eval().infer_init()
    for batch in (1, 5):  # the batch is dynamic
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {'image': x.numpy()})[0])
        assert (got - expected).abs().max() <= 1e-4
    assert 'onnxruntime vs PyTorch: max |diff|' in result.stdout
