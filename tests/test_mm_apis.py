"""The libraries' own doors: mmdet's init_detector + inference_detector and DetInferencer, mmseg's init_model +
inference_model and MMSegInferencer, in a process that imports nothing of this project but what the configs'
custom_imports load. A Runner checkpoint in the official release's layout (message hub pickled under numpy 1.x
names) and our own file of the same weights give the same predictions; a malicious file is refused by each,
without running. The seed README's config names build their models."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from official_layout import official_runner_checkpoint, save_as_numpy1

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from classification.data import shapes as shapes_dataset  # noqa: E402

# What the seed README (the official README as published) links, and the configs here they name.
SEED_CONFIGS = {
    'detection/configs/vheat/mask_rcnn_vssm_fpn_coco_tiny.py': 'mask_rcnn_fpn_coco_tiny.py',
    'detection/configs/vheat/mask_rcnn_vssm_fpn_coco_small.py': 'mask_rcnn_fpn_coco_small.py',
    'detection/configs/vheat/mask_rcnn_vssm_fpn_coco_base.py': 'mask_rcnn_fpn_coco_base.py',
    'detection/configs/vheat/mask_rcnn_vssm_fpn_coco_tiny1_ms_3x.py': 'mask_rcnn_fpn_coco_tiny_ms_3x.py',
    'detection/configs/vheat/mask_rcnn_vssm_fpn_coco_small_ms_3x.py': 'mask_rcnn_fpn_coco_small_ms_3x.py',
    'segmentation/configs/vheat/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py':
        'upernet_vheat_160k_ade20k_512x512_tiny.py',
    'segmentation/configs/vheat/upernet_vssm_4xb4-160k_ade20k-512x512_small.py':
        'upernet_vheat_160k_ade20k_512x512_small.py',
    'segmentation/configs/vheat/upernet_vssm_4xb4-160k_ade20k-512x512_base.py':
        'upernet_vheat_160k_ade20k_512x512_base.py',
}

LIBRARY_APIS = r'''
import json, sys
import torch
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmseg.apis import MMSegInferencer, inference_model, init_model

case = json.loads(sys.argv[1])
project = [m for m in sys.modules if m.split('.')[0] in ('classification', 'detection', 'segmentation', 'tools')]
assert not project, f'imported before any config was read: {project}'
DET, SEG = case['det_config'], case['seg_config']
OPEN = {  # each library door: (load the model, load it as an inferencer)
    'det': (lambda w: init_detector(DET, w, device='cpu'),
            lambda w: DetInferencer(model=DET, weights=w, device='cpu', show_progress=False)),
    'seg': (lambda w: init_model(SEG, w, device='cpu'),
            lambda w: MMSegInferencer(model=SEG, weights=w, device='cpu')),
}


def predictions(task, sample):
    if task == 'det':
        p = sample.pred_instances
        return {'bboxes': p.bboxes, 'scores': p.scores, 'labels': p.labels, 'masks': p.masks}
    return {'logits': sample.seg_logits.data, 'map': sample.pred_sem_seg.data}


def infer(task, model):
    return inference_detector(model, case['image']) if task == 'det' else inference_model(model, case['image'])


def by_inferencer(task, inferencer):
    out = inferencer(case['image'], return_datasamples=True)
    return out['predictions'][0] if task == 'det' else out


results = {}
for task, (load, load_inferencer) in OPEN.items():
    for layout in ('ours', 'official'):
        weights = case[f'{task}_{layout}']
        model = load(weights)
        results[f'{task}/{layout}'] = (
            {k: v.clone() for k, v in model.state_dict().items()},
            predictions(task, infer(task, model)),
            predictions(task, by_inferencer(task, load_inferencer(weights))))
    refused = {}
    for api, opener in (('init', load), ('inferencer', load_inferencer)):
        try:
            opener(case['evil'])
            refused[api] = None
        except Exception as e:  # what each door raises for a file that would run code
            refused[api] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
    results[f'{task}/refused'] = refused
torch.save(results, case['out'])
'''


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _build(config: str, scope: str):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(scope)
    from mmengine.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def _runner_checkpoint(model, classes):
    """A checkpoint as mmengine's Runner writes it: meta (dataset_meta for the APIs' class names), the weights,
    and the message hub (HistoryBuffers of the logged scalars, numpy scalars)."""
    import numpy as np
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('vheat-api-test')
    hub.update_scalar('train/loss', np.float64(1.25))
    hub.update_info('iter', 2)
    return {'meta': {'dataset_meta': {'classes': classes}, 'iter': 2, 'epoch': 0},
            'state_dict': model.state_dict(), 'message_hub': hub.state_dict()}


def _save_both(model, classes, tmp_path, name):
    ours = tmp_path / f'{name}_ours.pth'
    official = tmp_path / f'{name}_official.pth'
    checkpoint = _runner_checkpoint(model, classes)
    torch.save(checkpoint, ours)
    save_as_numpy1(official_runner_checkpoint(checkpoint, [1, 1, 1, 1]), official)
    return str(ours), str(official), checkpoint['state_dict']


def test_library_inference_apis_read_official_and_own_checkpoints_alike_and_refuse_malicious_ones(tmp_path):
    coco, ade = tmp_path / 'coco', tmp_path / 'ade'
    shapes_dataset.make_coco(str(coco), num_train=1, num_val=1, size=64)
    shapes_dataset.make_ade(str(ade), num_train=1, num_val=1, size=64)
    det_base = shapes_dataset.detection_config(str(coco / 'base.py'), str(coco), max_iters=2, size=64)
    det_config = coco / 'config.py'  # every box kept, so that the random weights' predictions are compared
    det_config.write_text(f"_base_ = [{det_base!r}]\nmodel = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))\n")
    seg_config = shapes_dataset.segmentation_config(str(ade / 'config.py'), str(ade), max_iters=2, size=64)
    det_ours, det_official, det_weights = _save_both(_build(str(det_config), 'mmdet'), shapes_dataset.CLASSES,
                                                     tmp_path, 'det')
    seg_ours, seg_official, seg_weights = _save_both(_build(seg_config, 'mmseg'),
                                                     ('background',) + shapes_dataset.CLASSES, tmp_path, 'seg')
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'meta': {}, 'state_dict': {}, 'payload': _RunsCode(str(marker))}, evil)
    case = dict(det_config=str(det_config), seg_config=seg_config, image=str(coco / 'val' / '00000.jpg'),
                det_ours=det_ours, det_official=det_official, seg_ours=seg_ours, seg_official=seg_official,
                evil=str(evil), out=str(tmp_path / 'results.pth'))
    import json
    result = subprocess.run([sys.executable, '-c', LIBRARY_APIS, json.dumps(case)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    results = torch.load(case['out'], weights_only=False)  # written by this test's own subprocess
    assert not marker.exists()
    for task, weights in (('det', det_weights), ('seg', seg_weights)):
        for layout in ('ours', 'official'):
            state, by_init, by_inferencer = results[f'{task}/{layout}']
            for key, value in weights.items():  # every weight loaded, official names converted
                assert torch.equal(state[key], value), f'{task} {layout}: {key}'
            # each door against itself with our file (mmseg's inference_model reads the config's test_pipeline,
            # MMSegInferencer the test dataloader's: they may preprocess differently)
            for door, predictions in ((1, by_init), (2, by_inferencer)):
                for key, value in results[f'{task}/ours'][door].items():
                    assert predictions[key].shape == value.shape, (task, layout, door, key)
                    assert (predictions[key].float() - value.float()).abs().max() <= 1e-4, (task, layout, door, key)
    assert len(results['det/ours'][1]['scores']) > 0
    for task in ('det', 'seg'):
        for api, error in results[f'{task}/refused'].items():
            assert error is not None and 'UnpicklingError' in error and 'Weights only load failed' in error, \
                (task, api, error)


@pytest.mark.parametrize('seed_path', sorted(SEED_CONFIGS))
def test_seed_readme_config_names_inherit_the_current_configs_and_build(seed_path):
    from mmengine.config import Config
    path = os.path.join(ROOT, seed_path)
    with open(path) as f:
        assert f.read() == f"_base_ = ['./{SEED_CONFIGS[seed_path]}']\n"
    cfg = Config.fromfile(path)
    current = Config.fromfile(os.path.join(os.path.dirname(path), SEED_CONFIGS[seed_path]))
    assert cfg.to_dict() == current.to_dict()
    scope = cfg.default_scope
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'MMvHeat' and sum(p.numel() for p in model.parameters()) > 4e7
