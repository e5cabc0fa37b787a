"""End to end on CPU: tools/dist_train.sh and tools/dist_test.sh (COCO bbox/segm mAP by pycocotools, mIoU with and
without --tta) on tiny generated data sets; checkpoints in the official release's layout (tools/test.py --out and
--show-dir, load_from, --resume PATH, tools/misc/image_demo.py); foreign checkpoints refused; a kill during a checkpoint
write."""
import glob
import os
import pickle
import re
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import FIXTURES, ROOT
from official_layout import official_runner_checkpoint, save_as_numpy1

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from classification.data import shapes as shapes_dataset  # noqa: E402

_PORT = iter(range(29610, 29700))
# the config the Runner logs: with --tta the model is SegTTAModel wrapping the segmentor as its `module`
_TTA_MODEL = re.compile(r"^model = dict\(\n(    _scope_='mmseg',\n)?    module=dict\(", re.M)
# training images: the longest run here (4 iterations of batch 2, one process; 2 iterations on two) stays in its
# first epoch, because mmengine's iteration-based loop sleeps 2 s at every epoch's end
NUM_TRAIN = 8


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
    shapes_dataset.make_coco(str(root), num_train=NUM_TRAIN, num_val=3, size=64)
    return shapes_dataset.detection_config(str(root / 'config.py'), str(root), max_iters=2, size=64)


@pytest.fixture(scope='module')
def segmentation_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    shapes_dataset.make_ade(str(root), num_train=NUM_TRAIN, num_val=3, size=64)
    return shapes_dataset.segmentation_config(str(root / 'config.py'), str(root), max_iters=2, size=64)


def _relative(path, start) -> str:
    return os.path.relpath(path, start)


@pytest.fixture(scope='module')
def trained_detector(detection_config, tmp_path_factory):
    """The tiny Mask R-CNN trained by 2 processes (tools/dist_train.sh); its work dir."""
    work_dir = tmp_path_factory.mktemp('det_work')
    _run('dist_train.sh', detection_config, '2', '--work-dir', str(work_dir))
    assert (work_dir / 'iter_2.pth').is_file() and not list(work_dir.glob('*.tmp'))
    return work_dir


@pytest.fixture(scope='module')
def trained_segmentor(segmentation_config, tmp_path_factory):
    """The tiny UperNet trained by 2 processes; its work dir."""
    work_dir = tmp_path_factory.mktemp('seg_work')
    _run('dist_train.sh', segmentation_config, '2', '--work-dir', str(work_dir))
    assert (work_dir / 'iter_2.pth').is_file()
    return work_dir


def _official_copy(work_dir, tmp_path) -> str:
    """iter_2.pth as the official runs would have written it: backbone under the official wrapper's names, the
    whole file pickled with numpy 1.x's names (``numpy.core.multiarray``)."""
    import classification.mm.checkpoints  # noqa: F401  (Runner checkpoints weights-only)
    ours = torch.load(work_dir / 'iter_2.pth', weights_only=True)
    path = tmp_path / 'official.pth'
    save_as_numpy1(official_runner_checkpoint(ours, [1, 1, 1, 1]), path)
    pickled = zipfile.ZipFile(path).read(f'{path.stem}/data.pkl')
    assert b'numpy.core.multiarray\n_reconstruct' in pickled and b'numpy._core' not in pickled
    assert b'patch_embed.conv1.weight' in pickled and b'outnorm3.weight' in pickled
    assert b'stem.conv1.weight' not in pickled
    return str(path)


def _predictions(path):
    with open(path, 'rb') as f:
        return pickle.load(f)  # written by this test run's tools/test.py


@pytest.fixture(scope='module')
def tested_detector(detection_config, trained_detector, tmp_path_factory):
    """The trained detector tested by 2 processes (tools/dist_test.sh --out) from another folder, with paths
    relative to it (the scripts keep the caller's working directory); (that folder, the run)."""
    elsewhere = tmp_path_factory.mktemp('elsewhere')
    result = _run('dist_test.sh', _relative(detection_config, elsewhere),
                  _relative(trained_detector / 'iter_2.pth', elsewhere), '2', '--work-dir', 'test2', '--out',
                  'ours.pkl', cwd=str(elsewhere))
    return elsewhere, result


def test_mask_rcnn_official_and_own_checkpoints_test_alike_with_one_and_two_processes(detection_config,
                                                                                      trained_detector,
                                                                                      tested_detector, tmp_path):
    """Our checkpoint tested by 2 processes from another folder with relative paths, the same weights in the
    official layout by 1 process: the same COCO bbox and mask mAP (every image counted once) and the same
    predictions (--out), each test image painted (--show-dir)."""
    official = _official_copy(trained_detector, tmp_path)
    elsewhere, ours = tested_detector
    theirs = _run('dist_test.sh', detection_config, official, '1', '--work-dir', str(tmp_path / 'test1'), '--out',
                  str(tmp_path / 'official.pkl'), '--show-dir', str(tmp_path / 'painted'))
    assert (elsewhere / 'test2').is_dir() and (tmp_path / 'test1').is_dir()
    assert _metrics(ours, 'coco/bbox_mAP', 'coco/segm_mAP') == _metrics(theirs, 'coco/bbox_mAP', 'coco/segm_mAP')
    expected, got = _predictions(elsewhere / 'ours.pkl'), _predictions(tmp_path / 'official.pkl')
    assert len(expected) == len(got) == 3
    for a, b in zip(sorted(expected, key=lambda r: r['img_id']), sorted(got, key=lambda r: r['img_id'])):
        assert a['img_path'] == b['img_path'] and len(a['pred_instances']['scores']) > 0
        for key in ('bboxes', 'scores', 'labels'):
            assert (a['pred_instances'][key].float() - b['pred_instances'][key].float()).abs().max() <= 1e-4, key
        assert [m['counts'] for m in a['pred_instances']['masks']] == \
            [m['counts'] for m in b['pred_instances']['masks']]
    painted = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / 'painted' / '*.jpg')))
    assert painted == ['00000.jpg', '00001.jpg', '00002.jpg']


def test_upernet_official_and_own_checkpoints_test_alike_with_and_without_tta(segmentation_config,
                                                                              trained_segmentor, tmp_path):
    """Ours by 2 processes, the official layout by 1: the same mIoU and predictions, logits included (--out), each
    test image painted (--show-dir); --tta runs the config's test-time augmentation."""
    official = _official_copy(trained_segmentor, tmp_path)
    ours = str(trained_segmentor / 'iter_2.pth')
    two = _run('dist_test.sh', segmentation_config, ours, '2', '--work-dir', str(tmp_path / 'a'), '--out',
               str(tmp_path / 'ours.pkl'))
    one = _run('dist_test.sh', segmentation_config, official, '1', '--work-dir', str(tmp_path / 'b'), '--out',
               str(tmp_path / 'official.pkl'), '--show-dir', str(tmp_path / 'painted'))
    tta = _run('dist_test.sh', segmentation_config, ours, '1', '--tta', '--work-dir', str(tmp_path / 'c'))
    assert not _TTA_MODEL.search(one.stdout) and _TTA_MODEL.search(tta.stdout)
    assert _metrics(one, 'mIoU') == _metrics(two, 'mIoU')
    _metrics(tta, 'mIoU')
    expected, got = _predictions(tmp_path / 'ours.pkl'), _predictions(tmp_path / 'official.pkl')
    assert len(expected) == len(got) == 3
    for a, b in zip(sorted(expected, key=lambda r: r['img_path']), sorted(got, key=lambda r: r['img_path'])):
        assert a['seg_logits']['data'].shape == (3, 64, 64)  # the logits are kept, per class and pixel
        assert (a['seg_logits']['data'] - b['seg_logits']['data']).abs().max() <= 1e-4
        assert torch.equal(a['pred_sem_seg']['data'], b['pred_sem_seg']['data'])
    painted = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / 'painted' / '*')))
    assert painted == ['00000.jpg', '00001.jpg', '00002.jpg']


LOAD_AND_DUMP = '''
import os
import torch
from classification.mm import runner as mm_runner
from tools import train
from tools.misc import image_demo
from mmengine.runner import Runner

def load_then_dump(self):
    Runner.load_or_resume(self)
    model = mm_runner.unwrap(self.model)
    torch.save({{'state_dict': model.state_dict(), 'iter': self.iter}}, os.environ['DUMP'])
    raise SystemExit(0)

mm_runner.StrictRunner.load_or_resume = load_then_dump
for dump, argv in {runs!r}:
    os.environ['DUMP'] = dump
    try:
        train.main(argv)
    except SystemExit as e:
        assert e.code == 0, e.code
image_demo.main({demo!r})
'''


def test_official_layout_loads_fully_by_load_from_resume_and_image_demo(detection_config, segmentation_config,
                                                                        trained_detector, trained_segmentor,
                                                                        tmp_path):
    """load_from=official.pth and tools/train.py --resume official.pth, for the Mask R-CNN and the UperNet: every
    parameter, output norms included, equals the file's (converted), and resuming continues at the file's
    iteration. tools/misc/image_demo.py paints the official detection checkpoint's prediction on an image."""
    runs, expected = [], {}
    for task, config, work_dir in (('det', detection_config, trained_detector),
                                   ('seg', segmentation_config, trained_segmentor)):
        (tmp_path / task).mkdir()
        official = _official_copy(work_dir, tmp_path / task)
        expected[task] = work_dir / 'iter_2.pth'
        runs += [(str(tmp_path / task / 'load_from.pth'),
                  [config, '--work-dir', str(tmp_path / task / 'w1'), '--cfg-options', f'load_from={official}']),
                 (str(tmp_path / task / 'resume.pth'),
                  [config, '--work-dir', str(tmp_path / task / 'w2'), '--resume', official])]
    image = os.path.join(os.path.dirname(detection_config), 'val', '00001.jpg')
    demo = [image, detection_config, str(tmp_path / 'det' / 'official.pth'), '--out-dir', str(tmp_path / 'demo'),
            '--score-thr', '0.0']
    script = tmp_path / 'load_and_dump.py'
    script.write_text(LOAD_AND_DUMP.format(root=ROOT, runs=runs, demo=demo))
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=dict(_env(), PYTHONPATH=ROOT),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    import classification.mm.checkpoints  # noqa: F401  (Runner checkpoints weights-only)
    for task in ('det', 'seg'):
        reference = torch.load(expected[task], weights_only=True)['state_dict']
        assert any(k.startswith('backbone.out_norms.3.') for k in reference)
        for mode in ('load_from', 'resume'):
            dumped = torch.load(tmp_path / task / f'{mode}.pth', weights_only=True)
            assert set(dumped['state_dict']) == set(reference), (task, mode)
            for key, value in reference.items():
                assert torch.equal(dumped['state_dict'][key], value), f'{task} {mode}: {key}'
        assert torch.load(tmp_path / task / 'resume.pth', weights_only=True)['iter'] == 2
    painted = tmp_path / 'demo' / '00001.jpg'
    assert painted.is_file() and f'painted prediction written to {painted}' in result.stdout
    import cv2
    original, drawn = cv2.imread(image), cv2.imread(str(painted))
    assert drawn.shape == original.shape and (drawn.astype(int) - original).any()  # something was drawn


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
from mmengine.fileio.backends.local_backend import LocalBackend
put = LocalBackend.put

def put_then_die(self, obj, filepath):
    if str(filepath).endswith('iter_4.pth.tmp'):  # half the second checkpoint, then killed
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    put(self, obj, filepath)

LocalBackend.put = put_then_die
from tools import train
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
    import classification.mm.checkpoints  # noqa: F401  (Runner checkpoints weights-only)
    assert torch.load(tmp_path / 'iter_4.pth', weights_only=True)['meta']['iter'] == 4


LIBRARY_TOOLS = r'''
import json, os, runpy, sys
for script, argv in json.loads(sys.argv[1]):
    sys.argv = [script] + argv
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        assert not e.code, (script, e.code)
    print(f'=== done {os.path.basename(script)}', flush=True)
'''


def _library_tools(package: str, runs) -> str:
    """The library's analysis tools as installed (``<package>/.mim/tools/analysis_tools/``), run one after another in
    one process with PYTHONPATH=. (the configs' custom_imports); what they printed."""
    import importlib
    import json
    tools = os.path.join(os.path.dirname(importlib.import_module(package).__file__), '.mim', 'tools', 'analysis_tools')
    calls = [(os.path.join(tools, name), [str(a) for a in argv]) for name, argv in runs]
    result = subprocess.run([sys.executable, '-c', LIBRARY_TOOLS, json.dumps(calls)], cwd=ROOT,
                            env=dict(_env(), PYTHONPATH=ROOT), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count('=== done') == len(calls)
    return result.stdout + result.stderr


def test_the_libraries_analysis_tools_run_on_these_configs(detection_config, segmentation_config, trained_detector,
                                                           trained_segmentor, tested_detector, tmp_path):
    """mmdet's get_flops.py, browse_dataset.py, analyze_logs.py plot_curve, confusion_matrix.py and benchmark.py
    (its dataloader task: inference needs CUDA), and mmseg's benchmark.py and analyze_logs.py, on the trained tiny
    models and their logs. (mmseg's get_flops.py --shape fails in mmengine 0.10.7, see docs/downstream.md.)"""
    from mmengine.config import Config
    analysis = tmp_path / 'analysis.py'  # get_flops.py reads the val loader, which the tiny config leaves out
    test_loader = Config.fromfile(detection_config).test_dataloader.to_dict()
    analysis.write_text(f"_base_ = [{detection_config!r}]\nval_dataloader = {dict(test_loader, _delete_=True)!r}\n")
    predictions = tested_detector[0] / 'ours.pkl'
    det_log, = glob.glob(str(trained_detector / '*' / 'vis_data' / '2*.json'))
    seg_log, = glob.glob(str(trained_segmentor / '*' / 'vis_data' / '2*.json'))
    printed = _library_tools('mmdet', [
        ('get_flops.py', [analysis, '--num-images', 2]),
        ('browse_dataset.py', [detection_config, '--output-dir', tmp_path / 'browse', '--not-show']),
        ('analyze_logs.py', ['plot_curve', det_log, '--keys', 'loss', '--out', tmp_path / 'det_loss.png']),
        ('confusion_matrix.py', [detection_config, predictions, tmp_path / 'confusion']),
        ('benchmark.py', [detection_config, '--task', 'dataloader', '--num-warmup', 0, '--log-interval', 1,
                          '--max-iter', 2])])
    assert re.search(r'Input shape: \(64, 64\)\nFlops: [\d.]+G\nParams: [\d.]+M', printed), printed[-3000:]
    assert 'Overall fps:' in printed
    assert sorted(os.listdir(tmp_path / 'browse')) == [f'{i:05d}.jpg' for i in range(NUM_TRAIN)]
    for image in ('det_loss.png', 'confusion/confusion_matrix.png'):
        assert (tmp_path / image).stat().st_size > 1000, image
    ade = tmp_path / 'ade'  # benchmark.py averages over its first 200 images
    shapes_dataset.make_ade(str(ade), num_train=1, num_val=200, size=64)
    config = shapes_dataset.segmentation_config(str(ade / 'config.py'), str(ade), max_iters=2, size=64)
    printed = _library_tools('mmseg', [
        ('benchmark.py', [config, trained_segmentor / 'iter_2.pth', '--log-interval', 1]),
        ('analyze_logs.py', [seg_log, '--keys', 'loss', '--out', tmp_path / 'seg_loss.png'])])
    assert re.search(r'Average fps of 1 evaluations: [\d.]+\b', printed), printed[-3000:]
    assert (tmp_path / 'seg_loss.png').stat().st_size > 1000
