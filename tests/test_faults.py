"""The trainer under faults: nodes without a shared file system, preemption signals, a full disk, bad input."""
import contextlib
import io
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
from PIL import Image

from conftest import ROOT
from test_trainer import MAIN, TINY_CONFIG, env, free_port, main_error, main_ok, make_folder, run_main


def _weights(path):
    return torch.load(path, weights_only=True)


def assert_same_weights(final, expected, parts=('model', 'model_ema')):
    for part in parts:
        for key, value in expected[part].items():
            assert (final[part][key] - value).abs().max().item() <= 1e-6, f'{part}.{key}'


def _wait_for(predicate, process, what, timeout=180):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, f'the run ended before {what}'
        assert time.time() < deadline, f'no {what} after {timeout} s'
        time.sleep(0.05)


@pytest.fixture(scope='module')
def fault_data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('faults'), ['a', 'b', 'c'], 16, 2)


@pytest.fixture(scope='module')
def fault_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'faults.yaml'
    path.write_text(TINY_CONFIG.replace('EPOCHS: 2', 'EPOCHS: 3').replace('PRINT_FREQ: 5', 'PRINT_FREQ: 1'))
    return str(path)


def _node_command(rank, port, cfg, data, output):
    return [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1', f'--node_rank={rank}',
            '--master_addr=127.0.0.1', f'--master_port={port}', MAIN, '--cfg', cfg, '--data-path', data,
            '--output', str(output)]


def _descendants(pid):
    """Every process under ``pid`` (from /proc): torchrun's workers are not in its process group."""
    children = {}
    for stat in os.listdir('/proc'):
        if stat.isdigit():
            try:
                with open(f'/proc/{stat}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except OSError:  # the process ended meanwhile
                continue
            children.setdefault(ppid, []).append(int(stat))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process):
    """SIGKILL a node: the launcher and everything it started, at once (a machine failing)."""
    for pid in [process.pid] + _descendants(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _two_nodes(cfg, data, outputs):
    port = free_port()
    return [subprocess.Popen(_node_command(rank, port, cfg, data, outputs[rank]), env=env(), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for rank in range(2)]


def _finish(nodes):
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]
    return logs


def test_two_nodes_without_shared_files_resume_together_from_rank_0(fault_data, fault_cfg, tmp_path):
    """torchrun --nnodes=2, an output folder per node, both killed during the third epoch: restarted, both start
    from rank 0's checkpoint (rank 1's folder has none) and end with the uninterrupted run's weights."""
    _finish(_two_nodes(fault_cfg, fault_data, [tmp_path / 'ref0', tmp_path / 'ref1']))
    expected = _weights(tmp_path / 'ref0' / 'tiny' / 'default' / 'ckpt_epoch_2.pth')

    outputs = [tmp_path / 'node0', tmp_path / 'node1']
    nodes = _two_nodes(fault_cfg, fault_data, outputs)
    folder0 = outputs[0] / 'tiny' / 'default'
    _wait_for(lambda: 'Train: [2/3]' in (folder0 / 'log_rank0.txt').read_text()
              if (folder0 / 'log_rank0.txt').exists() else False, nodes[0], 'the third epoch')
    for node in nodes:
        _kill_tree(node)
    time.sleep(1)  # nothing may write after the kill
    assert not (folder0 / 'ckpt_epoch_2.pth').exists(), 'the kill came too late'
    assert not list((outputs[1] / 'tiny' / 'default').glob('*.pth'))  # only rank 0 writes

    _finish(_two_nodes(fault_cfg, fault_data, outputs))
    assert_same_weights(_weights(folder0 / 'ckpt_epoch_2.pth'), expected)
    log1 = (outputs[1] / 'tiny' / 'default' / 'log_rank1.txt').read_text()
    assert re.search(r'loaded \S+ckpt_latest.pth \(epoch 1, step None\)', log1)  # rank 0's file, named on rank 1
    assert 'start training from epoch 2 to 3' in log1
    assert not list((outputs[1] / 'tiny' / 'default').glob('*.pth'))


def test_ranks_stop_together_when_rank_0_cannot_read_the_checkpoint(fault_data, fault_cfg, tmp_path):
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(b'PK\x03\x04 truncated')
    spawn = ('-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
             f'--master_port={free_port()}')
    result = run_main('--cfg', fault_cfg, '--data-path', fault_data, '--output', str(tmp_path), '--resume',
                      str(broken), launcher=spawn)
    assert result.returncode != 0
    # each rank prints the same line (torchrun may end the second one before it has printed)
    errors = set(line for line in result.stderr.splitlines() if line.startswith('error: '))
    assert errors == {f'error: cannot read checkpoint {broken}: a truncated or corrupt PyTorch checkpoint (14 bytes)'}
    for rank in range(2):
        assert 'start training' not in (tmp_path / 'tiny' / 'default' / f'log_rank{rank}.txt').read_text()


def test_an_error_line_is_written_at_once(monkeypatch):
    """Ranks of one launch share stderr: each error line must reach it in one write, or two lines can merge."""
    from classification.core.cli import exit_with_error
    writes = []
    monkeypatch.setattr(sys, 'stderr', SimpleNamespace(write=writes.append, flush=lambda: None))
    with pytest.raises(SystemExit) as exit_info:
        exit_with_error('cannot read checkpoint x.pth')
    assert exit_info.value.code == 1 and writes == ['error: cannot read checkpoint x.pth\n']


def test_sigterm_saves_mid_epoch_and_the_same_command_resumes_there(tmp_path):
    """SIGTERM a few steps into epoch 1: the run saves where it is and exits 143; the same command continues at
    that step and ends with the weights of an uninterrupted run (model and EMA)."""
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 32, 2)
    cfg = tmp_path / 'term.yaml'
    cfg.write_text(TINY_CONFIG.replace('NUM_WORKERS: 0', 'NUM_WORKERS: 1').replace('PRINT_FREQ: 5', 'PRINT_FREQ: 2'))
    args = ['--cfg', str(cfg), '--data-path', data]
    reference = run_main(*args, '--output', str(tmp_path / 'reference'))
    assert reference.returncode == 0, reference.stderr[-3000:]

    out_dir = tmp_path / 'stopped' / 'tiny' / 'default'
    command = [sys.executable, MAIN, *args, '--output', str(tmp_path / 'stopped')]
    process = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for line in process.stdout:  # a few steps into epoch 1 (24 steps an epoch)
        if 'Train: [1/2][6/' in line:
            break
    process.send_signal(signal.SIGTERM)
    log = line + process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, log[-3000:]
    stopped = int(re.search(r'stopped by SIGTERM at epoch 1 step (\d+) of 24', log).group(1))
    assert 6 <= stopped < 24
    saved = _weights(out_dir / 'ckpt_latest.pth')
    assert (saved['epoch'], saved['step']) == (1, stopped)
    assert not (out_dir / 'ckpt_epoch_1.pth').exists()

    resumed = subprocess.run(command, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resuming epoch 1 at step {stopped} of 24' in resumed.stdout
    assert_same_weights(_weights(out_dir / 'ckpt_epoch_1.pth'),
                        _weights(tmp_path / 'reference' / 'tiny' / 'default' / 'ckpt_epoch_1.pth'))


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(fault_data, fault_cfg, tmp_path):
    """SIGUSR1 (SLURM's advance warning) reaches rank 1 only: both ranks agree, stop at the same step, rank 0
    saves; resumed, the run ends with the weights of an uninterrupted one."""
    spawn = lambda: ('-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',  # noqa: E731
                     f'--master_port={free_port()}')
    args = ['--cfg', fault_cfg, '--data-path', fault_data, '--opts', 'TRAIN.EPOCHS', '2', 'DATA.BATCH_SIZE', '2']
    reference = run_main(*args, '--output', str(tmp_path / 'reference'), launcher=spawn())
    assert reference.returncode == 0, reference.stderr[-3000:]

    out_dir = tmp_path / 'stopped' / 'tiny' / 'default'
    command = [sys.executable, *spawn(), MAIN, *args, '--output', str(tmp_path / 'stopped')]
    process = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    rank1_log = out_dir / 'log_rank1.txt'
    _wait_for(lambda: rank1_log.exists() and 'Train: [1/2][1/' in rank1_log.read_text(), process, 'epoch 1')
    os.kill(int(re.search(r'rank 1 of 2 on cpu \(pid (\d+)\)', rank1_log.read_text()).group(1)), signal.SIGUSR1)
    log = process.communicate(timeout=120)[0]
    assert process.returncode != 0
    stopped = int(re.search(r'stopped by SIGUSR1 at epoch 1 step (\d+) of 12', log).group(1))
    assert _weights(out_dir / 'ckpt_latest.pth')['step'] == stopped

    resumed = subprocess.run([sys.executable, *spawn(), MAIN, *args, '--output', str(tmp_path / 'stopped')],
                             env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resuming epoch 1 at step {stopped} of 12' in resumed.stdout
    assert_same_weights(_weights(out_dir / 'ckpt_epoch_1.pth'),
                        _weights(tmp_path / 'reference' / 'tiny' / 'default' / 'ckpt_epoch_1.pth'))


FULL_DISK_WORKER = '''
import builtins, errno, sys
import classification.core.fileio as utils
opened = []

class FullDisk:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, 'No space left on device')
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()

def open_(path, mode='r', *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    opened.append(path)
    return FullDisk(f) if len(opened) > {writes_before_full} else f

utils.open = open_
import classification.main as trainer
trainer.main({argv!r})
'''


def test_full_disk_keeps_the_previous_checkpoint_and_names_the_file(tmp_path):
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 4, 1)
    cfg = tmp_path / 'disk.yaml'
    cfg.write_text(TINY_CONFIG)
    out_dir = tmp_path / 'tiny' / 'default'
    argv = ['--cfg', str(cfg), '--data-path', data, '--output', str(tmp_path)]
    script = tmp_path / 'full_disk.py'
    script.write_text(FULL_DISK_WORKER.format(root=ROOT, argv=argv, writes_before_full=3))  # epoch 0: 3 files
    result = subprocess.run([sys.executable, str(script)], env=env(), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert re.fullmatch(rf'error: cannot write checkpoint {re.escape(str(out_dir))}/ckpt_\w+\.pth: '
                        r'No space left on device', result.stderr.strip().splitlines()[-1]), result.stderr[-3000:]
    assert not list(out_dir.glob('*.tmp'))
    assert _weights(out_dir / 'ckpt_latest.pth')['epoch'] == 0


@pytest.fixture(scope='module')
def trained_folder(tmp_path_factory):
    """A data folder and the output of one finished tiny run (its files must survive every bad input below)."""
    root = tmp_path_factory.mktemp('bad')
    data = make_folder(root / 'data', ['a', 'b', 'c'], 4, 1)
    cfg = root / 'tiny.yaml'
    cfg.write_text(TINY_CONFIG.replace('EPOCHS: 2', 'EPOCHS: 1'))
    main_ok(['--cfg', str(cfg), '--data-path', data, '--output', str(root)])
    return data, str(cfg), root


@pytest.mark.parametrize('opts,fragment', [
    (['DATA.BATCH_SIZE', '0'], 'DATA.BATCH_SIZE must be an integer >= 1, got 0'),
    (['DATA.BATCH_SIZE', '-4'], 'DATA.BATCH_SIZE must be an integer >= 1, got -4'),
    (['DATA.IMG_SIZE', '0'], 'DATA.IMG_SIZE must be an integer >= 32'),
    (['DATA.IMG_SIZE', '7'], 'DATA.IMG_SIZE must be an integer >= 32'),
    (['SAVE_FREQ', '0'], 'SAVE_FREQ must be an integer >= 1, got 0'),
    (['PRINT_FREQ', '0'], 'PRINT_FREQ must be an integer >= 1, got 0'),
    (['MODEL.VHEAT.DEPTHS', '[]'], 'MODEL.VHEAT.DEPTHS must be a non-empty list'),
    (['MODEL.VHEAT.DCT_IMPL', 'auto'], "MODEL.VHEAT.DCT_IMPL must be one of 'matmul', 'fft', got 'auto'"),
    (['TRAIN.OPTIMIZER.NAME', 'adamx'], "TRAIN.OPTIMIZER.NAME must be 'adamw', 'sgd', 'fused_adam', 'fused_lamb'"),
    (['DATA.INTERPOLATION', 'cubic'], "DATA.INTERPOLATION must be 'random' or a PIL filter name"),
    (['TRAIN.ACCUMULATION_STEPS', '5'], 'TRAIN.ACCUMULATION_STEPS 5 is more than the 3 batches of an epoch'),
])
def test_bad_config_values_are_one_line_errors_before_any_work(trained_folder, opts, fragment):
    data, cfg, root = trained_folder
    before = {p: p.read_bytes() for p in (root / 'tiny' / 'default').glob('*.pth')}
    assert fragment in main_error(['--cfg', cfg, '--data-path', data, '--output', str(root), '--opts', *opts])
    assert {p: p.read_bytes() for p in (root / 'tiny' / 'default').glob('*.pth')} == before


def test_bad_batch_size_flag(trained_folder):
    data, cfg, root = trained_folder
    assert '--batch-size (DATA.BATCH_SIZE) must be an integer >= 1, got 0' in main_error(
        ['--cfg', cfg, '--data-path', data, '--output', str(root), '--batch-size', '0'])


@pytest.mark.parametrize('content,fragment', [
    (b'', 'is empty (0 bytes)'),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), 'is not a checkpoint of tensors'),
    (b'PK\x03\x04' + bytes(100), 'a truncated or corrupt PyTorch checkpoint'),
    ({'model': 5}, "'model' holds a int, not a state dict"),
    ({'model': {'stem.conv1.weight': 5}}, 'not tensors (1): stem.conv1.weight'),
])
def test_unusable_checkpoints_are_one_line_errors(trained_folder, tmp_path, content, fragment):
    data, cfg, root = trained_folder
    path = tmp_path / 'bad.pth'
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    message = main_error(['--cfg', cfg, '--data-path', data, '--output', str(tmp_path), '--eval', '--resume',
                          str(path)])
    assert fragment in message and str(path) in message
    assert 'unsafe' not in message and 'weights_only' not in message


def test_sixteen_bit_images_keep_their_content_and_float_images_are_refused(tmp_path):
    from classification.data import load_image
    from classification.data.build import DataError
    gradient = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(gradient).save(tmp_path / 'sixteen.png')
    assert Image.open(tmp_path / 'sixteen.png').mode == 'I;16'
    loaded = np.asarray(load_image(str(tmp_path / 'sixteen.png')))
    assert loaded.shape == (64, 64, 3) and (loaded[..., 0] == loaded[..., 2]).all()
    assert np.abs(loaded[..., 0].astype(int) - np.round(gradient / 257.0)).max() <= 1  # by bit depth, not clipped
    assert loaded.min() == 0 and loaded.max() == 255 and len(np.unique(loaded)) > 200
    Image.fromarray(np.random.rand(8, 8).astype(np.float32)).save(tmp_path / 'float.tiff')
    with pytest.raises(DataError, match=r'float.tiff: mode F \(floating point\) has no defined value range'):
        load_image(str(tmp_path / 'float.tiff'))


def test_sixteen_bit_folder_trains_and_a_link_loop_is_an_error(tmp_path):
    data = tmp_path / 'data'
    rng = np.random.default_rng(0)
    for split, count in (('train', 8), ('val', 2)):
        for c, level in enumerate((8000, 40000, 64000)):  # each class a brightness only 16 bits tell apart
            folder = data / split / f'c{c}'
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 2000, (32, 32)), 0, 65535).astype(np.uint16)
                Image.fromarray(pixels).save(folder / f'{i}.png')
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(TINY_CONFIG)
    main_ok(['--cfg', str(cfg), '--data-path', str(data), '--output', str(tmp_path / 'out')])
    from types import SimpleNamespace

    from classification.config import get_config
    from classification.data import BatchNormalize, build_dataset
    config = get_config(SimpleNamespace(cfg=str(cfg), opts=['DATA.DATA_PATH', str(data)]))
    val = build_dataset(config, 'val', False)
    normalize = BatchNormalize(config)
    means = [float(normalize(val[i][0][None]).mean()) for i in range(len(val))]  # classes in order c0, c0, c1, ...
    assert means[0] < means[2] < means[4] and means[4] - means[0] > 2  # not clipped to one white
    os.symlink(data / 'train' / 'c0', data / 'train' / 'c0' / 'again')
    message = main_error(['--cfg', str(cfg), '--data-path', str(data), '--output', str(tmp_path / 'out')])
    assert 'directory link loop' in message and 'c0/again' in message


def _interpolate(*args):
    """classification/interpolate4downstream.py in this process: its one error line."""
    from classification import interpolate4downstream
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        interpolate4downstream.main(list(args))
    message = stderr.getvalue()
    assert exit_info.value.code == 1 and message.startswith('error: ') and message.count('\n') == 1, message
    return message


def test_interpolate4downstream_refuses_bad_input(tmp_path):
    from conftest import FIXTURES
    official = os.path.join(FIXTURES, 'official_vheat_mini.pth')
    out = str(tmp_path / 'out.pth')
    assert 'checkpoint not found' in _interpolate('--pt_pth', str(tmp_path / 'missing.pth'), '--tg_pth', out)
    (tmp_path / 'random.pth').write_bytes(bytes(range(256)) * 8)
    assert 'is not a checkpoint of tensors' in _interpolate('--pt_pth', str(tmp_path / 'random.pth'), '--tg_pth', out)
    torch.save({'model': {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)}},
               tmp_path / 'resnet.pth')
    assert 'not a vHeat classification checkpoint' in _interpolate('--pt_pth', str(tmp_path / 'resnet.pth'),
                                                                   '--tg_pth', out)
    assert '--tg_size must be >= 32, got 0' in _interpolate('--pt_pth', official, '--tg_pth', out, '--tg_size', '0')
    assert 'is --pt_size right?' in _interpolate('--pt_pth', official, '--pt_size', '224', '--tg_pth', out)
    assert 'cannot write checkpoint' in _interpolate('--pt_pth', official, '--pt_size', '64', '--tg_size', '128',
                                                     '--tg_pth', str(tmp_path / 'no' / 'such' / 'dir.pth'))
    assert not os.path.exists(out)


SRUN_TASK = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_ID': '0', 'SLURM_PROCID': '1', 'SLURM_LOCALID': '1',
             'SLURM_NTASKS': '2', 'SLURM_STEP_NUM_TASKS': '2', 'SLURM_STEP_NODELIST': 'gpu-a',
             'SLURM_JOB_NODELIST': 'gpu-a'}


def _srun_task(monkeypatch, **changes):
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    for key, value in dict(SRUN_TASK, **changes).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)


def test_srun_task_variables_make_torchruns_and_torchruns_own_win(monkeypatch):
    from classification.core.launch import job_port, srun_environment
    _srun_task(monkeypatch)
    assert srun_environment() == {'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_RANK': '1', 'MASTER_ADDR': 'gpu-a',
                                  'MASTER_PORT': str(job_port(4242, 0))}
    assert job_port(4242, 0) != job_port(4242, 1) and 20000 <= job_port(4242, 0) < 32000
    monkeypatch.setenv('MASTER_PORT', '31000')  # the user's choice is kept
    assert srun_environment()['MASTER_PORT'] == '31000'
    _srun_task(monkeypatch, SLURM_STEP_ID=None)  # the batch script of an sbatch job is not a task: one process
    assert srun_environment() is None
    _srun_task(monkeypatch, SLURM_NTASKS='1', SLURM_STEP_NUM_TASKS='1')  # srun -n 1: a plain run
    assert srun_environment() is None and srun_environment(alone=True)['WORLD_SIZE'] == '1'
    _srun_task(monkeypatch, RANK='3', WORLD_SIZE='4')  # torchrun inside srun, one launcher per node: torchrun's
    assert srun_environment() is None


def test_two_rank_zero_processes_are_refused_in_one_line(monkeypatch, fault_data, fault_cfg, tmp_path):
    """``srun -n 2 torchrun --nproc_per_node 1 ...``: each task's group has one process, so each would be a rank 0
    writing the same output folder."""
    _srun_task(monkeypatch, RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
    main_error(['--cfg', fault_cfg, '--data-path', fault_data, '--output', str(tmp_path)],
               'srun started 2 tasks, but this one belongs to a process group of 1 (set by its launcher): each task '
               'would have its own rank 0')
    assert not (tmp_path / 'tiny').exists()
