"""The official release as a user meets it: ``pretrained=True`` through timm (the release URL in torch's hub cache,
sockets blocked), the same file by path, torch.hub, a malicious file in its place, and no file while offline."""
import json
import os

import pytest
import timm
import torch
from timm.scheduler import CosineLRScheduler
from yacs.config import CfgNode

from classification.config import _C as TRAINER_DEFAULTS
from classification.models import MODEL_ARGS, vHeat
from classification.models.serialization import CheckpointDownloadError, UnsafeCheckpointError
from classification.models.vheat import RELEASE_URL
from conftest import FIXTURES, ROOT
from official_layout import official_param_groups, to_official

TINY_URL = RELEASE_URL + 'vheatcls/vHeat_tiny.pth'
DEPTHS = MODEL_ARGS['vheat_tiny']['depths']


def official_training_checkpoint(model_state, ema_state, depths):
    """A checkpoint as the official trainer writes it (``save_checkpoint_ema``): official names, an AdamW state in
    its two parameter groups after one step, timm's cosine schedule, the GradScaler, the epoch, a yacs config."""
    official = to_official(model_state, depths)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in official.items()}
    decay, no_decay = official_param_groups(official)
    optimizer = torch.optim.AdamW([{'params': [params[k] for k in decay]},
                                   {'params': [params[k] for k in no_decay], 'weight_decay': 0.}], lr=2e-3)
    generator = torch.Generator().manual_seed(3)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    scheduler = CosineLRScheduler(optimizer, t_initial=280 * 625, lr_min=2e-5, warmup_lr_init=2e-6, warmup_t=20 * 625,
                                  t_in_epochs=False, warmup_prefix=True)
    config = CfgNode(TRAINER_DEFAULTS.clone())
    return {'model': official, 'optimizer': optimizer.state_dict(), 'lr_scheduler': scheduler.state_dict(),
            'max_accuracy': 81.9, 'scaler': {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5,
                                             'growth_interval': 2000, '_growth_tracker': 0},
            'epoch': 299, 'config': config, 'model_ema': to_official(ema_state, depths), 'max_accuray_ema': 82.1}


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """TORCH_HOME whose hub cache holds a full-size vHeat-T release file (seeded random weights, model and EMA
    different) under the URL's file name; the reference models with those weights."""
    torch_home = tmp_path_factory.mktemp('torch_home')
    torch.manual_seed(0)
    model = vHeat(**MODEL_ARGS['vheat_tiny']).eval()
    torch.manual_seed(1)
    ema = vHeat(**MODEL_ARGS['vheat_tiny']).eval()
    path = torch_home / 'hub' / 'checkpoints' / 'vHeat_tiny.pth'
    path.parent.mkdir(parents=True)
    torch.save(official_training_checkpoint(model.state_dict(), ema.state_dict(), DEPTHS), path)
    return dict(torch_home=str(torch_home), file=str(path), model=model, ema=ema,
                x=torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))


@pytest.fixture
def hub(release, offline, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', release['torch_home'])
    return release


def test_official_layout_helper_matches_the_official_key_order_and_shapes():
    layout = json.load(open(os.path.join(FIXTURES, 'official_vheat_layout.json')))['vHeat_tiny']
    official = to_official(vHeat(**MODEL_ARGS['vheat_tiny']).state_dict(), DEPTHS)
    assert [(k, list(v.shape)) for k, v in official.items()] == list(layout['state_dict_train_mode'].items())


@torch.no_grad()
def test_pretrained_true_loads_the_release_model_weights_from_the_hub_cache(hub):
    model = timm.create_model('vheat_tiny', pretrained=True).eval()
    x = hub['x']
    expected, ema = hub['model'](x), hub['ema'](x)
    assert (ema - expected).abs().max() > 1e-2  # the two choices differ
    assert (model(x) - expected).abs().max() <= 1e-6
    ema_model = timm.create_model('vheat_tiny.in1k_ema', pretrained=True).eval()
    assert (ema_model(x) - ema).abs().max() <= 1e-6
    # the same file by path gives the same weights as the URL path (timm's own file loader would take model_ema)
    by_file = timm.create_model('vheat_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=hub['file'])).eval()
    assert (by_file(x) - expected).abs().max() <= 1e-6


@torch.no_grad()
def test_pretrained_into_other_classes_and_as_features(hub):
    reference = hub['model'].state_dict()
    ten = timm.create_model('vheat_tiny', pretrained=True, num_classes=10).eval()
    loaded = ten.state_dict()
    assert loaded['head.fc.weight'].shape == (10, 768)
    assert all(torch.equal(loaded[k], v) for k, v in reference.items() if not k.startswith('head.fc.'))
    features = timm.create_model('vheat_tiny', pretrained=True, features_only=True).eval()
    expected = hub['model'].forward_intermediates(hub['x'], intermediates_only=True)
    got = features(hub['x'])
    assert [f.shape[1] for f in got] == [96, 192, 384, 768]
    assert all((a - b).abs().max() <= 1e-6 for a, b in zip(got, expected))


@torch.no_grad()
def test_torch_hub_load_of_this_repository(hub):
    model = torch.hub.load(ROOT, 'vheat_tiny', source='local', pretrained=True).eval()
    assert (model(hub['x']) - hub['model'](hub['x'])).abs().max() <= 1e-6


def test_a_malicious_file_in_the_cache_is_refused_and_does_not_run(tmp_path, offline, monkeypatch):
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    torch.save({'model': {'stem.conv1.weight': torch.zeros(1)}, 'config': Payload()}, cache / 'vHeat_tiny.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match=r'refusing to load .*vHeat_tiny\.pth: it needs posix\.system'):
        timm.create_model('vheat_tiny', pretrained=True)
    assert not marker.exists()


def test_offline_without_the_file_is_one_line_naming_url_and_cache(tmp_path, offline, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(CheckpointDownloadError) as error:
        timm.create_model('vheat_small', pretrained=True)
    message = str(error.value)
    assert '\n' not in message
    small_url = TINY_URL.replace('tiny', 'small')
    assert f'cannot download {small_url}' in message
    assert f'put the file at {tmp_path}/hub/checkpoints/vHeat_small.pth' in message
