"""The ImageNet trainer (classification/main.py) end to end on tiny generated folders, on CPU, in subprocesses (bad
input: main() in this process)."""
import contextlib
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT

MAIN = os.path.join(ROOT, 'classification', 'main.py')
TINY_CONFIG = """
MODEL:
  NAME: tiny
  NUM_CLASSES: 3
  DROP_PATH_RATE: 0.1
  VHEAT:
    EMBED_DIM: 8
    DEPTHS: [1, 1, 1, 1]
DATA:
  IMG_SIZE: 32
  BATCH_SIZE: 4
  NUM_WORKERS: 0
TRAIN:
  EPOCHS: 2
  WARMUP_EPOCHS: 1
  BASE_LR: 0.256
AUG:
  SCALE: (0.5, 1.0)
MODEL_EMA_DECAY: 0.9
PRINT_FREQ: 5
"""


def make_folder(root, classes, train_per_class, val_per_class, size=32, seed=0):
    """An ImageFolder with train/ and val/; each class has its own mean colour, so it can be learnt."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                base = np.zeros(3) + 40
                base[c % 3] = 200
                pixels = np.clip(rng.normal(base, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, name, f'{i}.png'))
    return str(root)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def env():
    e = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        e.pop(key, None)
    return e


def run_main(*args, launcher=(), timeout=300):
    return subprocess.run([sys.executable, *launcher, MAIN, *args], env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _error_line(stderr: str, fragments) -> str:
    """stderr is exactly one ``error: ...`` line holding every fragment; that line."""
    assert stderr.startswith('error: ') and stderr.count('\n') == 1 and stderr.endswith('\n'), stderr[-3000:]
    line = stderr.rstrip('\n')
    for fragment in fragments:
        assert fragment in line, line
    return line


def assert_one_line_error(result, *fragments):
    """A trainer subprocess ended with exit status 1 and the error alone on stderr (no traceback, no warning)."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    return _error_line(result.stderr, fragments)


def main_ok(argv) -> str:
    """main() in this process for a run that must succeed (no interpreter start-up); what it printed."""
    import classification.main as trainer
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.main(argv)
    return printed.getvalue()


def main_error(argv, *fragments):
    """main() in this process (no interpreter start-up per case): exit status 1 and one ``error: ...`` line on
    stderr, which it returns. That nothing else reaches a terminal's stderr is checked in subprocesses."""
    import classification.main as trainer
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        trainer.main(argv)
    assert exit_info.value.code == 1, exit_info.value.code
    return _error_line(stderr.getvalue(), fragments)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('tiny'), ['a', 'b', 'c'], 8, 4)


@pytest.fixture(scope='module')
def tiny_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny.yaml'
    path.write_text(TINY_CONFIG)
    return str(path)


@pytest.fixture(scope='module')
def trained(tiny_data, tiny_cfg, tmp_path_factory):
    """One single-process training run of two epochs; its output folder and what it printed."""
    output = tmp_path_factory.mktemp('single')
    printed = main_ok(['--cfg', tiny_cfg, '--data-path', tiny_data, '--output', str(output)])
    return os.path.join(output, 'tiny', 'default'), printed


def test_single_process_training_writes_plain_checkpoints_and_logs(trained):
    out_dir, log = trained
    for name in ('ckpt_epoch_0.pth', 'ckpt_epoch_1.pth', 'ckpt_latest.pth', 'ckpt_best.pth'):
        assert os.path.isfile(os.path.join(out_dir, name)), name
    assert not [f for f in os.listdir(out_dir) if f.endswith('.tmp')]
    checkpoint = torch.load(os.path.join(out_dir, 'ckpt_latest.pth'), weights_only=True)
    assert checkpoint['epoch'] == 1 and isinstance(checkpoint['config'], str)
    assert 'EMBED_DIM: 8' in checkpoint['config']
    assert set(checkpoint) >= {'model', 'model_ema', 'optimizer', 'lr_scheduler', 'max_accuracy'}
    for fragment in ('number of params', 'number of GFLOPs', 'eta ', 'lr ', 'loss ', '* model: Acc@1',
                     '* model_ema: Acc@1', 'EMA accuracy'):
        assert fragment in log, fragment
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(out_dir))
    # the warm-up and cosine schedule is stepped per iteration: the lr changes within the first epoch
    lrs = [float(line.split(' lr ')[1].split()[0]) for line in log.splitlines() if 'Train: [0/2]' in line]
    assert len(set(lrs)) > 1


@pytest.mark.parametrize('launcher', ['torch.distributed.launch', 'torchrun'])
def test_two_process_cpu_training_then_eval(launcher, tiny_data, tiny_cfg, tmp_path):
    """Either launcher trains on 2 processes; the checkpoint of the torchrun run is then evaluated (model and EMA)
    by a single process (the official command lines, --throughput included: tests/test_official_cli.py)."""
    port = str(free_port())
    module = 'torch.distributed.launch' if launcher == 'torch.distributed.launch' else 'torch.distributed.run'
    spawn = ('-m', module, '--nproc_per_node=2', '--master_addr=127.0.0.1', f'--master_port={port}')
    result = run_main('--cfg', tiny_cfg, '--data-path', tiny_data, '--output', str(tmp_path),
                      '--opts', 'TRAIN.EPOCHS', '1', launcher=spawn)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'rank 0 of 2 on cpu' in result.stdout
    out_dir = tmp_path / 'tiny' / 'default'
    assert (out_dir / 'log_rank1.txt').read_text().count('rank 1 of 2') == 1
    checkpoint = out_dir / 'ckpt_epoch_0.pth'
    assert checkpoint.is_file()
    # 24 training images, 2 processes x batch 4: 3 steps per process per epoch
    assert 'Train: [0/1][3/3]' in result.stdout
    if launcher != 'torchrun':
        return
    import classification.main as trainer
    trainer.main(['--cfg', tiny_cfg, '--data-path', tiny_data, '--output', str(tmp_path), '--tag', 'eval', '--eval',
                  '--resume', str(checkpoint), '--model_ema', 'True'])
    log = (tmp_path / 'tiny' / 'eval' / 'log_rank0.txt').read_text()
    assert 'Accuracy of the network on the 12 test images' in log
    assert 'Accuracy of the EMA network on the 12 test images' in log


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_checkpoint_that_would_run_code_is_refused(tiny_data, tiny_cfg, tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'payload': _RunsCode(str(marker))}, evil)
    with pytest.raises(pickle.UnpicklingError):  # the file really is a code-running pickle
        torch.load(evil, weights_only=True)
    main_error(['--cfg', tiny_cfg, '--data-path', tiny_data, '--output', str(tmp_path), '--eval', '--resume',
                str(evil)], 'refusing to load', 'system')
    assert not marker.exists()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL during epoch 1, restart with the same command: final weights equal an uninterrupted run."""
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 64, 2)
    cfg = tmp_path / 'resume.yaml'
    # the defaults add RandAugment, mixup/cutmix and random erasing; with drop path and a loader worker,
    # every RNG the trainer uses is exercised
    cfg.write_text(TINY_CONFIG.replace('NUM_WORKERS: 0', 'NUM_WORKERS: 1'))
    args = ['--cfg', str(cfg), '--data-path', data]

    reference = run_main(*args, '--output', str(tmp_path / 'reference'))
    assert reference.returncode == 0, reference.stderr[-3000:]

    out_dir = tmp_path / 'killed' / 'tiny' / 'default'
    command = [sys.executable, MAIN, *args, '--output', str(tmp_path / 'killed')]
    process = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 120
    while not (out_dir / 'ckpt_latest.pth').exists():
        assert process.poll() is None and time.time() < deadline, 'the run ended before its first checkpoint'
        time.sleep(0.02)
    log = ''
    for line in process.stdout:  # kill a few steps into epoch 1
        log += line
        if 'Train: [1/2][10/' in line:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out_dir / 'ckpt_epoch_1.pth').exists(), 'the kill came too late'

    resumed = subprocess.run(command, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'auto-resuming from' in resumed.stdout and 'start training from epoch 1' in resumed.stdout
    final = torch.load(out_dir / 'ckpt_epoch_1.pth', weights_only=True)
    expected = torch.load(tmp_path / 'reference' / 'tiny' / 'default' / 'ckpt_epoch_1.pth', weights_only=True)
    for part in ('model', 'model_ema'):
        for key, value in expected[part].items():
            assert (final[part][key] - value).abs().max().item() <= 1e-6, f'{part}.{key}'


def test_missing_and_empty_data_paths_are_one_line_errors(tiny_cfg, tmp_path):
    """The command line: exit status 1 and the error alone on stderr (no traceback, no warning)."""
    missing = run_main('--cfg', tiny_cfg, '--data-path', str(tmp_path / 'nowhere'), '--output', str(tmp_path))
    assert_one_line_error(missing, 'data folder not found', 'nowhere')
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    (tmp_path / 'empty' / 'val').mkdir()
    main_error(['--cfg', tiny_cfg, '--data-path', str(tmp_path / 'empty'), '--output', str(tmp_path)],
               'empty', 'class folder')


def test_train_and_val_class_folders_must_match(tiny_cfg, tmp_path):
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 4, 1)
    os.rename(os.path.join(data, 'val', 'c'), os.path.join(data, 'val', 'z'))
    main_error(['--cfg', tiny_cfg, '--data-path', data, '--output', str(tmp_path)],
               'class folders differ', "only in train: ['c']", "only in val: ['z']")


def test_truncated_image_is_an_error_naming_the_file(tiny_cfg, tmp_path):
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 4, 1)
    broken = os.path.join(data, 'train', 'b', '2.png')
    with open(broken, 'rb') as f:
        content = f.read()
    with open(broken, 'wb') as f:
        f.write(content[:len(content) // 2])
    for workers in ('0', '1'):  # raised in this process, and re-raised from a loader worker
        main_error(['--cfg', tiny_cfg, '--data-path', data, '--output', str(tmp_path), '--opts', 'DATA.NUM_WORKERS',
                    workers], 'cannot read image', broken)


def test_unknown_config_key_is_a_one_line_error(tiny_data, tiny_cfg, tmp_path):
    main_error(['--cfg', tiny_cfg, '--data-path', tiny_data, '--opts', 'TRAIN.NO_SUCH_KEY', '1'], 'TRAIN.NO_SUCH_KEY')
    bad_file = tmp_path / 'bad.yaml'
    bad_file.write_text('MODEL:\n  VHEAT:\n    EMBED_DIMS: 8\n')
    main_error(['--cfg', str(bad_file), '--data-path', tiny_data], str(bad_file), 'MODEL.VHEAT.EMBED_DIMS')


def test_checkpoint_of_another_architecture_names_the_mismatched_keys(trained, tiny_data, tiny_cfg, tmp_path):
    checkpoint = os.path.join(trained[0], 'ckpt_best.pth')
    args = ['--cfg', tiny_cfg, '--data-path', tiny_data, '--output', str(tmp_path), '--eval', '--resume', checkpoint]
    main_error([*args, '--opts', 'MODEL.VHEAT.DEPTHS', '[1,1,2,1]'], 'does not fit', 'missing (', 'stages.2.blocks.1.')
    main_error([*args, '--opts', 'MODEL.VHEAT.EMBED_DIM', '16'], 'shape mismatch', 'stem.')


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(trained, tiny_data, tiny_cfg):
    out_dir = trained[0]
    good = os.path.join(out_dir, 'ckpt_latest.pth')
    before = open(good, 'rb').read()
    # same output folder, weights from the good checkpoint, an absurd learning rate: the loss diverges
    result = run_main('--cfg', tiny_cfg, '--data-path', tiny_data, '--output', os.path.dirname(os.path.dirname(out_dir)),
                      '--pretrained', good, '--opts', 'TRAIN.AUTO_RESUME', 'False', 'TRAIN.BASE_LR', '1e30',
                      'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.CLIP_GRAD', '0.0')
    assert_one_line_error(result, 'loss is not finite at epoch 0 step', 'last checkpoint was kept')
    assert open(good, 'rb').read() == before
