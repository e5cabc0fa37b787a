"""End to end on CPU: tools/dist_train.sh and tools/dist_test.sh (COCO bbox/segm mAP by pycocotools, mIoU with and
without --tta) on tiny generated data sets; foreign checkpoints refused; a kill during a checkpoint write."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import shapes_dataset  # noqa: E402

_PORT = iter(range(29610, 29700))
# the config the Runner logs: with --tta the model is SegTTAModel wrapping the segmentor as its `module`
_TTA_MODEL = re.compile(r"^model = dict\(\n(    _scope_='mmseg',\n)?    module=dict\(", re.M)


def _env():
    return dict(os.environ, PYTHON=sys.executable, PORT=str(next(_PORT)), OMP_NUM_THREADS='1')


def _run(script: str, *args: str, cwd: str = ROOT, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(['bash', os.path.join(ROOT, 'tools', script), *args], cwd=cwd, env=_env(),
                            capture_output=True, text=True, timeout=400)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _metrics(result: subprocess.CompletedProcess, *names: str):
    log = result.stdout + result.stderr
    values = []
    for name in names:
        found = re.findall(rf'{re.escape(name)}: (-?[\d.]+)', log)
        assert found, f'{name} not reported'
        values.append(float(found[-1]))
    return values


@pytest.fixture(scope='module')
def detection_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    shapes_dataset.make_coco(str(root), num_train=4, num_val=3, size=64)
    return shapes_dataset.detection_config(str(root / 'config.py'), str(root), max_iters=2, size=64)


@pytest.fixture(scope='module')
def segmentation_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    shapes_dataset.make_ade(str(root), num_train=4, num_val=3, size=64)
    return shapes_dataset.segmentation_config(str(root / 'config.py'), str(root), max_iters=2, size=64)


def _relative(path, start) -> str:
    return os.path.relpath(path, start)


def test_mask_rcnn_trains_and_tests_the_same_with_one_and_two_processes(detection_config, tmp_path):
    """Trained by 2 processes; tested from another folder with relative paths (the scripts keep the caller's
    working directory) by 1 and by 2 processes: the same COCO bbox and mask mAP (every image counted once)."""
    _run('dist_train.sh', detection_config, '2', '--work-dir', str(tmp_path))
    checkpoint = tmp_path / 'iter_2.pth'
    assert checkpoint.is_file() and not list(tmp_path.glob('*.tmp'))
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    args = (_relative(detection_config, elsewhere), _relative(checkpoint, elsewhere))
    one = _run('dist_test.sh', *args, '1', '--work-dir', 'test1', cwd=str(elsewhere))
    two = _run('dist_test.sh', *args, '2', '--work-dir', 'test2', cwd=str(elsewhere))
    assert (elsewhere / 'test1').is_dir() and (elsewhere / 'test2').is_dir()
    assert _metrics(one, 'coco/bbox_mAP', 'coco/segm_mAP') == _metrics(two, 'coco/bbox_mAP', 'coco/segm_mAP')


def test_upernet_trains_and_reports_miou(segmentation_config, tmp_path):
    _run('dist_train.sh', segmentation_config, '2', '--work-dir', str(tmp_path))
    checkpoint = tmp_path / 'iter_2.pth'
    assert checkpoint.is_file()
    plain_one = _run('dist_test.sh', segmentation_config, str(checkpoint), '1', '--work-dir', str(tmp_path))
    plain_two = _run('dist_test.sh', segmentation_config, str(checkpoint), '2', '--work-dir', str(tmp_path))
    tta = _run('dist_test.sh', segmentation_config, str(checkpoint), '2', '--tta', '--work-dir', str(tmp_path))
    assert not _TTA_MODEL.search(plain_one.stdout) and _TTA_MODEL.search(tta.stdout)
    assert _metrics(plain_one, 'mIoU') == _metrics(plain_two, 'mIoU')
    _metrics(tta, 'mIoU')


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_test_refuses_a_checkpoint_of_another_architecture(detection_config, tmp_path):
    official = os.path.join(FIXTURES, 'official_vheat_mini.pth')  # a classifier, not a Mask R-CNN
    env = dict(_env(), PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'test.py'), detection_config, official,
                             '--work-dir', str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    error = _one_line_error(result)
    assert f'{official} does not fit the MaskRCNN of the config' in error
    assert re.search(r'missing \(\d+\): backbone\.stem\.conv1\.weight', error)
    assert 'unexpected (5): model, model_ema, max_accuracy, epoch' in error  # a classification checkpoint


def test_init_cfg_refuses_a_foreign_backbone_checkpoint(tmp_path):
    foreign = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)}},
               foreign)
    root = tmp_path / 'coco'
    shapes_dataset.make_coco(str(root), num_train=2, num_val=1, size=64)
    config = shapes_dataset.detection_config(
        str(root / 'config.py'), str(root), max_iters=1, size=64,
        backbone=dict(shapes_dataset.TINY_BACKBONE, init_cfg=dict(type='Pretrained', checkpoint=str(foreign))))
    env = dict(_env(), PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                             str(tmp_path / 'work')], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    error = _one_line_error(result)
    assert f'{foreign} does not fit the vHeat backbone' in error
    assert re.search(r'missing \(\d+\): stem\.conv1\.weight', error) and 'unexpected (2): conv1.weight' in error
    assert not list((tmp_path / 'work').glob('*.pth'))


KILLED_WRITE = '''
import os, signal, sys
sys.path[:0] = [{root!r}, os.path.join({root!r}, 'tools')]
from mmengine.fileio.backends.local_backend import LocalBackend
put = LocalBackend.put

def put_then_die(self, obj, filepath):
    if str(filepath).endswith('iter_4.pth.tmp'):  # half the second checkpoint, then killed
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    put(self, obj, filepath)

LocalBackend.put = put_then_die
import train
sys.argv = ['train.py'] + {argv!r}
train.main()
'''


def test_kill_during_a_checkpoint_write_leaves_a_resumable_run(detection_config, tmp_path):
    """max_keep_ckpts=1: iter_2.pth stays until iter_4.pth is complete; killed while writing iter_4.pth, the run
    resumes from iter_2.pth with --resume and finishes."""
    argv = [detection_config, '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_iters=4',
            'default_hooks.checkpoint.interval=2']
    script = tmp_path / 'killed_write.py'
    script.write_text(KILLED_WRITE.format(root=ROOT, argv=argv))
    env = dict(_env(), PYTHONPATH=ROOT)
    killed = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert not (tmp_path / 'iter_4.pth').exists()
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), *argv, '--resume'], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed' in resumed.stdout + resumed.stderr and str(tmp_path / 'iter_2.pth') in resumed.stdout + \
        resumed.stderr
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_4.pth')
    assert not (tmp_path / 'iter_2.pth').exists()  # max_keep_ckpts=1, removed once iter_4.pth was complete
    import mm_runner
    mm_runner.allow_runner_checkpoints()
    assert torch.load(tmp_path / 'iter_4.pth', weights_only=True)['meta']['iter'] == 4
