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


def _compiled_matches_eager(backend, dynamic, sizes, train_size):
    """Inference at each of ``sizes``, then a training step (gradients) at ``train_size``."""
    torch.manual_seed(0)
    model = vHeat(**TINY, drop_path_rate=0.0).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend=backend)
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(2, 3, *size)
            assert (compiled(x) - model(x)).abs().max() <= 1e-4, size
    model.train()
    x, y = torch.randn(2, 3, *train_size), torch.tensor([1, 7])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.nn.functional.cross_entropy(compiled(x), y).backward()
    for name, param in model.named_parameters():
        assert (param.grad - eager[name]).abs().max() <= 1e-4, name


def test_torch_compile_captures_one_graph_for_every_size():
    """fullgraph=True, dynamic=True: dynamo captures the whole model once with symbolic sizes, and that one graph
    serves 96x128 and 256x320 (and a training step; at the embeddings' own 64x64, which need no resizing, it
    would specialise). Inductor cannot lower symbolic spatial sizes of these
    channels-last convolutions yet (pytorch/pytorch#185510), so this checks the capture with the eager backend."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    _compiled_matches_eager('eager', dynamic=True, sizes=[(96, 128), (256, 320)], train_size=(96, 128))
    assert counters['stats']['unique_graphs'] == 2  # one inference graph, one training graph


def test_torch_compile_inductor_matches_eager_in_inference_and_training(monkeypatch, tmp_path):
    """The default backend: inference at 256x320 (the frequency embeddings resized, as downstream) and a training
    step at the model's own 64x64 (as ImageNet training), a graph each; compiled here, not taken from inductor's
    on-disk cache of an earlier run."""
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))
    _compiled_matches_eager('inductor', dynamic=False, sizes=[(256, 320)], train_size=(64, 64))


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
