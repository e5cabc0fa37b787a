"""The paper's ImageNet recipe as the official runs had it: augmentation that runs, the learning-rate rule,
the resolved configs, exact evaluation and gradient accumulation under DDP."""
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import FIXTURES, ROOT
from test_trainer import MAIN, env, free_port, main_ok, make_folder, run_main

CONFIGS = os.path.join(ROOT, 'classification', 'configs', 'vHeat')
OFFICIAL = os.path.join(FIXTURES, 'official_vheat_mini.pth')


def _config(name, **flags):
    from classification.config import get_config
    return get_config(SimpleNamespace(cfg=os.path.join(CONFIGS, name), opts=None, **flags))


def test_posterize_keeps_pillows_bits_and_gives_black_at_zero_bits():
    from classification.data.augment import posterize
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    for bits in range(1, 8):
        assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
    assert posterize(img, 8) is img
    black = posterize(img, 0)
    assert black.size == img.size and black.mode == 'RGB' and not np.asarray(black).any()


def test_official_augmentation_runs_images_through_transform_and_mixup(monkeypatch):
    """vHeat_tiny_224.yaml's exact training transform (RandAugment rand-m9-mstd0.5-inc1, colour jitter, random
    erasing) and mixup/cutmix over 1,024 images; its posterize reaches 0 bits (the call that stopped Pillow 13)."""
    import copy

    from timm.data import auto_augment

    from classification.data import augment
    from classification.data.build import build_mixup, build_transform

    bits_seen = []

    def recording_posterize(img, bits_to_keep, **kwargs):
        bits_seen.append(bits_to_keep)
        return augment.posterize(img, bits_to_keep, **kwargs)

    for name in augment.POSTERIZE_OPS:  # RandAugment binds its ops when built
        monkeypatch.setitem(auto_augment.NAME_TO_OP, name, recording_posterize)
    config = _config('vHeat_tiny_224.yaml')
    assert config.AUG.AUTO_AUGMENT == 'rand-m9-mstd0.5-inc1'
    transform = build_transform(config, is_training=True)
    mixup = build_mixup(config)
    rng = np.random.default_rng(0)
    sources = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(16)]
    batch = 128
    for step in range(8):
        images = torch.stack([transform(sources[i % 16]) for i in range(batch)])
        assert images.shape == (batch, 3, 224, 224) and torch.isfinite(images).all()
        mixed, targets = mixup(images, torch.randint(0, 1000, (batch,)))
        assert targets.shape == (batch, 1000)
        assert torch.allclose(targets.sum(1), torch.ones(batch))

    rand_augment, = [t for t in transform.transforms if isinstance(t, auto_augment.RandAugment)]
    posterize, = [op for op in rand_augment.ops if op.name == 'PosterizeIncreasing']
    # magnitude ~ N(9, 0.5) clipped to 10: one draw in 44 is 10, which keeps 4 - 4 = 0 bits
    assert (posterize.magnitude, posterize.magnitude_std) == (9, 0.5)
    strongest = copy.copy(posterize)
    strongest.prob, strongest.magnitude, strongest.magnitude_std = 1.0, 10, 0
    bits_seen.clear()
    black = strongest(sources[0])
    assert bits_seen == [0] and black.size == sources[0].size and not np.asarray(black).any()


@pytest.mark.parametrize('name,drop_path', [('vHeat_tiny_224.yaml', 0.1), ('vHeat_small_224.yaml', 0.3),
                                            ('vHeat_base_224.yaml', 0.5)])
@pytest.mark.parametrize('processes,accumulation', [(16, 1), (1, 16)])
def test_recipe_resolves_to_the_official_run(name, drop_path, processes, accumulation):
    from classification.config import scale_learning_rates, total_batch
    config = scale_learning_rates(_config(name, batch_size=128, accumulation_steps=accumulation), processes)
    assert total_batch(config, processes) == 2048
    assert config.TRAIN.BASE_LR == pytest.approx(2e-3)
    assert config.TRAIN.WARMUP_LR == pytest.approx(2e-6)
    assert config.TRAIN.MIN_LR == pytest.approx(2e-5)
    assert config.MODEL.DROP_PATH_RATE == drop_path
    train, aug = config.TRAIN, config.AUG
    assert (train.WEIGHT_DECAY, train.EPOCHS, train.WARMUP_EPOCHS, train.CLIP_GRAD) == (0.08, 300, 20, 5.0)
    assert train.OPTIMIZER.NAME == 'adamw' and config.MODEL.LABEL_SMOOTHING == 0.1
    assert (aug.MIXUP, aug.CUTMIX, aug.REPROB, aug.COLOR_JITTER) == (0.8, 1.0, 0.25, 0.4)
    assert aug.AUTO_AUGMENT == 'rand-m9-mstd0.5-inc1'
    assert config.MODEL_EMA and config.MODEL_EMA_DECAY == 0.9999


def test_eval_run_saves_and_logs_the_effective_rates(tmp_path):
    data = make_folder(tmp_path / 'data', [str(i) for i in range(10)], 1, 1, size=64)
    printed = main_ok(['--cfg', os.path.join(CONFIGS, 'vHeat_tiny_224.yaml'), '--data-path', data,
                       '--output', str(tmp_path), '--batch-size', '8', '--eval', '--resume', OFFICIAL,
                       '--opts', 'MODEL.NUM_CLASSES', '10', 'MODEL.VHEAT.EMBED_DIM', '16',
                       'MODEL.VHEAT.DEPTHS', '[1,1,2,1]', 'DATA.IMG_SIZE', '64', 'DATA.NUM_WORKERS', '0'])
    saved = (tmp_path / 'vHeat_tiny_224' / 'default' / 'config.yaml').read_text()
    base_lr = float(re.search(r'\n  BASE_LR: (\S+)', saved).group(1))
    warmup_lr = float(re.search(r'\n  WARMUP_LR: (\S+)', saved).group(1))
    assert base_lr == pytest.approx(5e-4 * 8 / 512) and warmup_lr == pytest.approx(5e-7 * 8 / 512)
    assert 'total batch 8 = 8 per process x 1 processes x 1 accumulation steps' in printed
    assert f'BASE_LR {5e-4 * 8 / 512:.6g}' in printed


def test_one_epoch_of_the_unmodified_tiny_recipe(tmp_path):
    """vHeat_tiny_224.yaml as it is (RandAugment, mixup/cutmix, erasing, EMA, 8 loader workers, batch 128),
    only the model shrunk, on 520 generated 224 px images: the first epoch trains, validates and saves."""
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c', 'd'], 130, 2, size=224)
    out_dir = tmp_path / 'out' / 'vHeat_tiny_224' / 'default'
    command = [sys.executable, MAIN, '--cfg', os.path.join(CONFIGS, 'vHeat_tiny_224.yaml'), '--data-path', data,
               '--output', str(tmp_path / 'out'), '--opts', 'MODEL.NUM_CLASSES', '4', 'MODEL.VHEAT.EMBED_DIM', '8',
               'MODEL.VHEAT.DEPTHS', '[1,1,1,1]']
    process = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 300
    try:
        while not (out_dir / 'ckpt_latest.pth').exists():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.time() < deadline, 'no checkpoint after 300 s'
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        log = process.communicate()[0]
    assert 'Train: [0/300][4/4]' in log and '* model: Acc@1' in log and '(8 images)' in log
    checkpoint = torch.load(out_dir / 'ckpt_latest.pth', weights_only=True)
    assert checkpoint['epoch'] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint['model'].values())


def _eval_log(data, config, tmp_path, tag, processes):
    argv = ['--cfg', str(config), '--data-path', data, '--output', str(tmp_path), '--tag', tag, '--eval',
            '--resume', OFFICIAL, '--model_ema', 'False']
    if processes == 1:
        printed = main_ok(argv)
    else:
        result = run_main(*argv, launcher=('-m', 'torch.distributed.run', f'--nproc_per_node={processes}',
                                           '--master_addr=127.0.0.1', f'--master_port={free_port()}'))
        assert result.returncode == 0, result.stderr[-3000:]
        printed = result.stdout
    return re.search(r'\* model: (Acc@1 \S+ Acc@5 \S+ loss \S+ \(\d+ images\))', printed).group(1)


def test_evaluation_counts_each_image_once_with_any_number_of_processes(tmp_path):
    """11 validation images over 2 processes (6 + 5; DistributedSampler would count 12): the same accuracy, loss
    and count as one process."""
    data = make_folder(tmp_path / 'data', [str(i) for i in range(10)], 2, 1, size=64)
    os.replace(os.path.join(data, 'train', '3', '1.png'), os.path.join(data, 'val', '3', '1.png'))
    config = tmp_path / 'mini.yaml'
    config.write_text('MODEL:\n  NAME: mini\n  NUM_CLASSES: 10\n  VHEAT:\n    EMBED_DIM: 16\n'
                      '    DEPTHS: [1, 1, 2, 1]\nDATA:\n  IMG_SIZE: 64\n  BATCH_SIZE: 2\n  NUM_WORKERS: 0\n')
    single = _eval_log(data, config, tmp_path, 'one', 1)
    assert single.endswith('(11 images)')
    assert _eval_log(data, config, tmp_path, 'two', 2) == single


ACCUMULATION_WORKER = '''
import json, os, sys
import contextlib, torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
import classification.engine.trainer as trainer
import classification.main as main

calls = []
wrap = trainer.wrap_ddp

def counting_wrap(model, device):
    if os.environ['RANK'] == '0':
        torch.save(model.state_dict(), os.path.join({out!r}, 'initial.pth'))
    ddp = wrap(model, device)
    ddp.register_comm_hook(None, lambda state, bucket: calls.append(1) or default_hooks.allreduce_hook(None, bucket))
    return ddp

trainer.wrap_ddp = counting_wrap
if {sync_every_micro_step}:
    trainer.grad_sync = lambda model, sync: contextlib.nullcontext()
main.main({argv!r})
with open(os.path.join({out!r}, 'calls_%s.json' % os.environ['RANK']), 'w') as f:
    json.dump(len(calls), f)
'''


def _accumulation_run(tmp_path, data, config, name, sync_every_micro_step):
    out = tmp_path / name
    out.mkdir()
    argv = ['--cfg', str(config), '--data-path', data, '--output', str(out), '--accumulation-steps', '2']
    script = tmp_path / f'{name}.py'
    script.write_text(ACCUMULATION_WORKER.format(root=ROOT, sync_every_micro_step=sync_every_micro_step,
                                                 argv=argv, out=str(out)))
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                             '--master_addr=127.0.0.1', f'--master_port={free_port()}', str(script)],
                            env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [int((out / f'calls_{rank}.json').read_text()) for rank in range(2)]
    assert calls[0] == calls[1]
    initial = torch.load(out / 'initial.pth', weights_only=True)
    return calls[0], initial, torch.load(out / 'acc' / 'default' / 'ckpt_latest.pth', weights_only=True)['model']


def test_accumulation_all_reduces_once_per_optimizer_step(tmp_path):
    """--accumulation-steps 2 under 2 processes: DDP all-reduces at the end of each window only (no_sync on the
    first micro-step), and the weights equal those of the run that synchronises every micro-step."""
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 8, 1)
    config = tmp_path / 'acc.yaml'
    config.write_text('MODEL:\n  NAME: acc\n  NUM_CLASSES: 3\n  DROP_PATH_RATE: 0.0\n  VHEAT:\n    EMBED_DIM: 8\n'
                      '    DEPTHS: [1, 1, 1, 1]\nDATA:\n  IMG_SIZE: 32\n  BATCH_SIZE: 2\n  NUM_WORKERS: 0\n'
                      'TRAIN:\n  EPOCHS: 1\n  WARMUP_EPOCHS: 0\n  BASE_LR: 0.5\nAUG:\n  MIXUP: 0.0\n  CUTMIX: 0.0\n'
                      'MODEL_EMA: False\n')
    # 24 images, 2 processes x batch 2: 6 micro-steps per process, 3 optimizer steps
    fast_calls, initial, fast = _accumulation_run(tmp_path, data, config, 'no_sync', False)
    slow_calls, slow_initial, slow = _accumulation_run(tmp_path, data, config, 'every_step', True)
    buckets = fast_calls // 3
    assert buckets >= 1 and fast_calls == 3 * buckets and slow_calls == 6 * buckets
    assert max((fast[k] - v).abs().max().item() for k, v in initial.items()) > 1e-2  # the optimizer stepped
    for key, value in slow.items():
        assert torch.equal(initial[key], slow_initial[key])
        assert (fast[key] - value).abs().max().item() <= 1e-5, key
