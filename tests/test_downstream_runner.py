"""End to end on CPU: tools/dist_train.sh with 1 and 2 processes, tools/dist_test.sh reporting COCO bbox/segm
mAP (pycocotools) and mIoU (with and without --tta), on tiny generated data sets."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import shapes_dataset  # noqa: E402

_PORT = iter(range(29610, 29700))
# the config the Runner logs: with --tta the model is SegTTAModel wrapping the segmentor as its `module`
_TTA_MODEL = re.compile(r"^model = dict\(\n(    _scope_='mmseg',\n)?    module=dict\(", re.M)


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(next(_PORT)), OMP_NUM_THREADS='1')
    result = subprocess.run(['bash', os.path.join(ROOT, 'tools', script), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _metric(log: str, name: str) -> float:
    values = re.findall(rf'{re.escape(name)}: (-?[\d.]+)', log)
    assert values, f'{name} not reported'
    return float(values[-1])


@pytest.fixture(scope='module')
def detection_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    shapes_dataset.make_coco(str(root), num_train=4, num_val=2, size=64)
    return shapes_dataset.detection_config(str(root / 'config.py'), str(root), max_iters=2, size=64)


@pytest.fixture(scope='module')
def segmentation_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    shapes_dataset.make_ade(str(root), num_train=4, num_val=2, size=64)
    return shapes_dataset.segmentation_config(str(root / 'config.py'), str(root), max_iters=2, size=64)


@pytest.mark.parametrize('processes', ['1', '2'])
def test_mask_rcnn_trains_and_reports_coco_map(detection_config, tmp_path, processes):
    _run('dist_train.sh', detection_config, processes, '--work-dir', str(tmp_path))
    checkpoint = tmp_path / 'iter_2.pth'
    assert checkpoint.is_file()
    log = _run('dist_test.sh', detection_config, str(checkpoint), '1', '--work-dir', str(tmp_path))
    for name in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert 0.0 <= _metric(log, name) <= 1.0


def test_upernet_trains_and_reports_miou(segmentation_config, tmp_path):
    _run('dist_train.sh', segmentation_config, '2', '--work-dir', str(tmp_path))
    checkpoint = tmp_path / 'iter_2.pth'
    assert checkpoint.is_file()
    plain_log = _run('dist_test.sh', segmentation_config, str(checkpoint), '1', '--work-dir', str(tmp_path))
    tta_log = _run('dist_test.sh', segmentation_config, str(checkpoint), '2', '--tta', '--work-dir', str(tmp_path))
    assert not _TTA_MODEL.search(plain_log) and _TTA_MODEL.search(tta_log)
    assert 0.0 <= _metric(plain_log, 'mIoU') <= 100.0 and 0.0 <= _metric(tta_log, 'mIoU') <= 100.0
