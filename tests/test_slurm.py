"""Every trainer under a real one-node SLURM cluster (tests/slurm_cluster.py): srun and tools/slurm_train.sh form
one process group, as torchrun does; an sbatch --requeue job stopped by SIGUSR1 requeues itself and resumes at
its step; a downstream job requeued by scontrol continues from its last checkpoint; tools/slurm_test.sh reports
what tools/dist_test.sh reports with one process."""
import os
import pickle
import re
import subprocess
import sys
import time

import pytest
import torch

import slurm_cluster
from conftest import ROOT
from test_trainer import MAIN, TINY_CONFIG, env, free_port, make_folder

REASON = slurm_cluster.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f'no one-node SLURM cluster here: {REASON}')
# 2 processes x batch 4 over 3 x 64 images: 24 steps an epoch, a log line (and a stop point) at each
SLURM_CONFIG = TINY_CONFIG.replace('PRINT_FREQ: 5', 'PRINT_FREQ: 1')
STEPS = 24


@pytest.fixture(scope='module')
def cluster():
    with slurm_cluster.LocalSlurm(cpus=2) as c:
        yield c


def job_env(cluster, **extra):
    """The trainers' environment under SLURM: the repository importable, one thread a process, CPU processes."""
    return cluster.env(dict(env(), PYTHON=sys.executable, GPUS='2', GPUS_PER_NODE='0', CPUS_PER_TASK='1',
                            **extra))


@pytest.fixture(scope='module')
def classification_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('slurm_cls')
    data = make_folder(root / 'data', ['a', 'b', 'c'], 64, 2)
    cfg = root / 'tiny.yaml'
    cfg.write_text(SLURM_CONFIG)
    return str(cfg), data, root


@pytest.fixture(scope='module')
def torchrun_weights(classification_run):
    """The reference: torchrun --nproc_per_node 2 of the same config and seed."""
    cfg, data, root = classification_run
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                             '--master_addr=127.0.0.1', f'--master_port={free_port()}', MAIN, '--cfg', cfg,
                             '--data-path', data, '--output', str(root / 'torchrun')], env=env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(root / 'torchrun' / 'tiny' / 'default' / 'ckpt_epoch_1.pth', weights_only=True)


def _assert_equal_weights(path, expected, tolerance=0.0):
    final = torch.load(path, weights_only=True)
    for part in ('model', 'model_ema'):
        for key, value in expected[part].items():
            if tolerance == 0.0:
                assert torch.equal(final[part][key], value), f'{part}.{key}'
            else:
                assert (final[part][key] - value).abs().max().item() <= tolerance, f'{part}.{key}'


def _assert_one_group_of_two(out_dir, host):
    """Each rank's log says rank r of 2, met at the job's first node (its name, as SLURM lists it)."""
    for rank in range(2):
        log = (out_dir / f'log_rank{rank}.txt').read_text()
        assert re.search(rf'rank {rank} of 2 on cpu \(pid \d+, srun job \d+ step \d+ task {rank}, rendezvous '
                         rf'{host}:\d+\)', log), log[-2000:]
    assert not (out_dir / 'log_rank2.txt').exists()


def test_srun_and_slurm_train_sh_train_as_one_process_group_like_torchrun(cluster, classification_run,
                                                                         torchrun_weights):
    """``srun -n 2 python classification/main.py`` and ``tools/slurm_train.sh`` (srun allocating from a login
    shell) each train as one process group of 2: rank r of 2 in each rank's log, and exactly torchrun's weights."""
    cfg, data, root = classification_run
    direct = subprocess.run(['srun', '-n', '2', '--cpus-per-task=1', sys.executable, MAIN, '--cfg', cfg,
                             '--data-path', data, '--output', str(root / 'srun')], env=job_env(cluster), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert direct.returncode == 0, direct.stdout[-2000:] + direct.stderr[-3000:]
    script = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'slurm_train.sh'), cluster.partition, 'vheat-tiny',
                             cfg, str(root / 'script'), '--data-path', data], env=job_env(cluster), cwd=str(root),
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0, script.stdout[-2000:] + script.stderr[-3000:]
    for name in ('srun', 'script'):
        out_dir = root / name / 'tiny' / 'default'
        _assert_one_group_of_two(out_dir, cluster.host)
        assert f'Train: [1/2][{STEPS}/{STEPS}]' in (out_dir / 'log_rank0.txt').read_text()
        _assert_equal_weights(out_dir / 'ckpt_epoch_1.pth', torchrun_weights)


def _sbatch(cluster, *args, env_extra=None) -> str:
    result = subprocess.run(['sbatch', '--parsable', '--requeue', '--open-mode=append', '-n', '2',
                             '--cpus-per-task=1', *args], env=job_env(cluster, **(env_extra or {})), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(';')[0]


def _wait_for_text(path, pattern, cluster, job_id, timeout=240):
    deadline = time.time() + timeout
    while True:
        text = path.read_text() if path.exists() else ''
        if re.search(pattern, text):
            return text
        state = cluster.job(job_id).get('JobState')
        assert state in ('PENDING', 'RUNNING', 'CONFIGURING'), f'job {job_id} is {state} before {pattern!r}'
        assert time.time() < deadline, f'no {pattern!r} in {path} after {timeout} s'
        time.sleep(0.05)


def _requeued_and_done(cluster, job_id):
    """Wait until SLURM has requeued the job, then until the requeued run has ended."""
    cluster.wait_for_job(job_id, lambda f: int(f.get('Restarts', 0)) >= 1, 'requeue')
    return cluster.wait_for_job(job_id, lambda f: f['JobState'] in ('COMPLETED', 'FAILED', 'CANCELLED'),
                                'end of the requeued run')


def test_sbatch_requeue_job_stopped_by_usr1_requeues_itself_and_resumes_at_its_step(cluster, classification_run,
                                                                                    torchrun_weights):
    """sbatch --requeue tools/slurm_train.sh; ``scancel --signal=USR1`` once rank 0 logs step 2 of epoch 1: the
    ranks stop at a step, rank 0 saves, the script requeues the job, the requeued job's log says where it resumes,
    and the weights end equal to torchrun's uninterrupted run."""
    cfg, data, root = classification_run
    output, log = root / 'requeue', root / 'requeue.log'
    job = _sbatch(cluster, '-o', str(log), os.path.join(ROOT, 'tools', 'slurm_train.sh'), cluster.partition,
                  'vheat-requeue', cfg, str(output), '--data-path', data)
    rank0 = output / 'tiny' / 'default' / 'log_rank0.txt'
    _wait_for_text(rank0, rf'Train: \[1/2\]\[2/{STEPS}\]', cluster, job)
    cluster.run('scancel', '--signal=USR1', job)
    fields = _requeued_and_done(cluster, job)
    text = log.read_text()
    assert fields['JobState'] == 'COMPLETED', f'{fields} {text[-3000:]} {cluster.log_tails()}'
    stopped = int(re.search(rf'stopped by SIGUSR1 at epoch 1 step (\d+) of {STEPS}', text).group(1))
    assert 2 <= stopped < STEPS
    assert f'stopped by SIGUSR1: requeueing job {job}' in text
    assert f'resuming epoch 1 at step {stopped} of {STEPS}' in rank0.read_text()
    _assert_equal_weights(output / 'tiny' / 'default' / 'ckpt_epoch_1.pth', torchrun_weights, tolerance=1e-6)


# --- downstream (mmengine's --launcher slurm) ------------------------------------------------------------------

def _shapes():
    from classification.data import shapes
    return shapes


@pytest.fixture(scope='module')
def detection_config(tmp_path_factory):
    pytest.importorskip('mmdet')
    shapes = _shapes()
    root = tmp_path_factory.mktemp('slurm_coco')
    shapes.make_coco(str(root), num_train=24, num_val=3, size=64)  # 6 iterations of 2 x 2 images in one epoch
    return shapes.detection_config(str(root / 'config.py'), str(root), max_iters=6, size=64)


@pytest.fixture(scope='module')
def requeued_detector(cluster, detection_config, tmp_path_factory):
    """A tiny Mask R-CNN as an sbatch --requeue job of tools/slurm_train.sh (2 CPU tasks, 6 iterations, a
    checkpoint every 2), requeued with ``scontrol requeue`` once its first checkpoint is written; (work dir, job
    log, checkpoint it was requeued after)."""
    work_dir = tmp_path_factory.mktemp('slurm_det')
    log = work_dir / 'job.log'
    job = _sbatch(cluster, '-o', str(log), os.path.join(ROOT, 'tools', 'slurm_train.sh'), cluster.partition,
                  'vheat-det', detection_config, str(work_dir), '--cfg-options', 'default_hooks.checkpoint.interval=2',
                  env_extra=dict(PORT=str(free_port())))
    last = work_dir / 'last_checkpoint'
    _wait_for_text(last, r'iter_\d+\.pth', cluster, job, timeout=300)
    requeued_after = last.read_text()
    cluster.run('scontrol', 'requeue', job)
    fields = _requeued_and_done(cluster, job)
    assert fields['JobState'] == 'COMPLETED', f'{fields} {log.read_text()[-3000:]} {cluster.log_tails()}'
    return work_dir, log.read_text(), requeued_after


def test_downstream_job_requeued_by_scontrol_continues_from_its_last_checkpoint(requeued_detector):
    work_dir, log, requeued_after = requeued_detector
    assert 'requeued job (restart 1): resuming from the last checkpoint in' in log
    resumed = re.search(r'Auto resumed from the latest checkpoint (\S+)\.', log)
    assert resumed, log[-4000:]
    start = int(re.search(r'iter_(\d+)\.pth', resumed.group(1)).group(1))
    assert start >= int(re.search(r'iter_(\d+)\.pth', requeued_after).group(1)) >= 2  # not from the beginning
    assert re.search(rf'resumed epoch: \d+, iter: {start}', log), log[-4000:]
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_6.pth')
    import classification.mm.checkpoints  # noqa: F401  (Runner checkpoints weights-only)
    assert torch.load(work_dir / 'iter_6.pth', weights_only=True)['meta']['iter'] == 6


@pytest.fixture(scope='module')
def slurm_segmentor(cluster, tmp_path_factory):
    """A tiny UperNet trained by tools/slurm_train.sh from a login shell (srun allocates 2 CPU tasks)."""
    pytest.importorskip('mmseg')
    shapes = _shapes()
    root = tmp_path_factory.mktemp('slurm_ade')
    shapes.make_ade(str(root), num_train=8, num_val=3, size=64)
    config = shapes.segmentation_config(str(root / 'config.py'), str(root), max_iters=2, size=64)
    work_dir = root / 'work'
    result = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'slurm_train.sh'), cluster.partition, 'vheat-seg',
                             config, str(work_dir)], env=job_env(cluster), cwd=ROOT, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return config, str(work_dir / 'iter_2.pth')


def _metrics(log: str, *names: str):
    return [float(re.findall(rf'{re.escape(name)}: (-?[\d.]+)', log)[-1]) for name in names]


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_slurm_test_sh_reports_the_metrics_of_dist_test_sh(task, cluster, request, tmp_path):
    """tools/slurm_test.sh's two tasks against tools/dist_test.sh's one process: the same metrics, and the same
    predictions of every test image, each once."""
    if task == 'det':
        config = request.getfixturevalue('detection_config')
        checkpoint = str(request.getfixturevalue('requeued_detector')[0] / 'iter_6.pth')
        names = ('coco/bbox_mAP', 'coco/segm_mAP')
    else:
        config, checkpoint = request.getfixturevalue('slurm_segmentor')
        names = ('mIoU',)
    slurm = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'slurm_test.sh'), cluster.partition, 'vheat-test',
                            config, checkpoint, '--work-dir', str(tmp_path / 'slurm'), '--out',
                            str(tmp_path / 'slurm.pkl')], env=job_env(cluster), cwd=ROOT, capture_output=True,
                           text=True, timeout=400)
    assert slurm.returncode == 0, slurm.stdout[-2000:] + slurm.stderr[-3000:]
    local = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'dist_test.sh'), config, checkpoint, '1',
                            '--work-dir', str(tmp_path / 'dist'), '--out', str(tmp_path / 'dist.pkl')],
                           env=dict(env(), PYTHON=sys.executable, PORT=str(free_port())), cwd=ROOT,
                           capture_output=True, text=True, timeout=400)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-3000:]
    assert 'launcher = \'slurm\'' in slurm.stdout and 'launcher = \'pytorch\'' in local.stdout
    assert _metrics(slurm.stdout + slurm.stderr, *names) == _metrics(local.stdout + local.stderr, *names)
    by_slurm, by_torchrun = (sorted(pickle.load(open(tmp_path / f'{name}.pkl', 'rb')), key=lambda r: r['img_path'])
                             for name in ('slurm', 'dist'))  # written by the two commands above
    assert len(by_slurm) == len(by_torchrun) == 3  # every test image once
    for a, b in zip(by_slurm, by_torchrun):
        if task == 'det':
            assert len(a['pred_instances']['scores']) > 0
            for key in ('bboxes', 'scores', 'labels'):
                assert torch.equal(a['pred_instances'][key], b['pred_instances'][key]), key
        else:
            assert torch.equal(a['seg_logits']['data'], b['seg_logits']['data'])


def test_a_bracketed_node_list_is_expanded_by_scontrol(cluster, monkeypatch):
    from classification.core.launch import first_host
    monkeypatch.setenv('SLURM_CONF', cluster.env()['SLURM_CONF'])
    assert first_host('gpu[03-05,7],cpu1') == 'gpu03' and first_host('node7,node8') == 'node7'
