"""vHeat weights into a model that holds a vHeat (``vheat.load_pretrained``): official and own layouts, wrapper
prefixes, .safetensors and timm's hub folders; a pickle that would run code is refused."""
import json
import os

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._manipulate import adapt_input_conv

import vheat
from conftest import FIXTURES
from vheat.vheat import rename_official_key, resize_freq_embed

LAYOUT = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))


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
    with caplog.at_level('INFO', logger=vheat.load_pretrained.__module__):
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
