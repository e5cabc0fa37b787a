"""Real images: the trainer on Fashion-MNIST's own files (Debian's dataset-fashion-mnist), vHeat and a timm peer
with the same recipe; tools/misc/predict.py on Fashion-MNIST pictures against the trainer's evaluation of them."""
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from test_trainer import env

FASHION = '/usr/share/datasets/fashion-mnist'
CONFIGS = os.path.join(ROOT, 'classification', 'configs', 'fashion_mnist')
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION, 't10k-images-idx3-ubyte.gz')),
                                reason=f'Fashion-MNIST is not installed in {FASHION} (apt-get install '
                                       'dataset-fashion-mnist, as root)')


def _train(name, output, *opts):
    """One epoch of classification/configs/fashion_mnist/<name>.yaml on the first 2,000 training images, in this
    process; its log."""
    import classification.main as trainer
    trainer.main(['--cfg', os.path.join(CONFIGS, f'{name}.yaml'), '--data-path', FASHION, '--output', str(output),
                  '--opts', 'TRAIN.EPOCHS', '1', 'TRAIN.WARMUP_EPOCHS', '0', 'DATA.TRAIN_SUBSET', '2000',
                  'DATA.NUM_WORKERS', '0', 'MODEL_EMA', 'False', *opts])
    return (output / f'fmnist_{name}' / 'default' / 'log_rank0.txt').read_text()


@pytest.fixture(scope='module')
def trained_vheat(tmp_path_factory):
    output = tmp_path_factory.mktemp('fmnist')
    return output / 'fmnist_vheat' / 'default', _train('vheat', output)


@pytest.mark.parametrize('name', ['vheat', 'resnet'])
def test_one_epoch_on_real_images_evaluates_the_10000_test_images(name, trained_vheat, tmp_path):
    log = trained_vheat[1] if name == 'vheat' else _train(name, tmp_path)
    assert 'Train: [0/1][15/15]' in log  # 2,000 images in batches of 128, the last partial one dropped
    assert re.search(r' \* model: Acc@1 [\d.]+ .*\(10000 images\)', log)  # exactly the 10,000 test images
    losses = [float(x) for x in re.findall(r'Train: \[0/1\]\[\d+/15\].*\tloss ([\d.]+)', log)]
    assert losses[-1] < losses[0], losses  # it learns
    if name == 'vheat':  # fifteen steps on real images take vHeat far above chance (10%)
        assert float(re.search(r' \* model: Acc@1 ([\d.]+)', log).group(1)) > 40, log[-2000:]


def test_predict_on_fashion_pictures_agrees_with_the_trainer(trained_vheat, tmp_path):
    """60 test pictures as PNG files in a class-per-folder layout: the trainer evaluates them (--eval) and
    tools/misc/predict.py classifies them from the same checkpoint; the top-1 accuracy agrees exactly, five classes are
    printed per picture, and a broken picture is named without stopping the others."""
    from classification.data.standard import read_idx
    images = read_idx(os.path.join(FASHION, 't10k-images-idx3-ubyte.gz'))[:60]
    labels = read_idx(os.path.join(FASHION, 't10k-labels-idx1-ubyte.gz'))[:60]
    for label in range(10):
        os.makedirs(tmp_path / 'pictures' / 'val' / str(label))
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(tmp_path / 'pictures' / 'val' / str(label) / f'{i:03d}.png')
    checkpoint = trained_vheat[0] / 'ckpt_epoch_0.pth'

    import classification.main as trainer
    trainer.main(['--cfg', os.path.join(CONFIGS, 'vheat.yaml'), '--data-path', str(tmp_path / 'pictures'), '--output',
                  str(tmp_path / 'eval'), '--eval', '--resume', str(checkpoint), '--model_ema', 'False', '--opts',
                  'DATA.DATASET', 'imagenet', 'DATA.NUM_WORKERS', '0'])
    log = (tmp_path / 'eval' / 'fmnist_vheat' / 'default' / 'log_rank0.txt').read_text()
    evaluated = float(re.search(r'Accuracy of the network on the 60 test images: ([\d.]+)%', log).group(1))

    (tmp_path / 'pictures' / 'val' / '3' / 'broken.png').write_bytes(b'not a picture')
    out = tmp_path / 'predictions.json'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'misc', 'predict.py'),
                             str(tmp_path / 'pictures' / 'val'), '--checkpoint', str(checkpoint), '--out', str(out)],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1  # one picture could not be read
    assert result.stderr.count('error: ') == 1 and 'broken.png' in result.stderr and 'Traceback' not in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 60 and all(line.count('%') == 5 for line in lines)
    from torchvision.datasets import FashionMNIST
    predictions = json.loads(out.read_text())
    assert len(predictions) == 60
    correct = sum(p['top'][0]['class'] == FashionMNIST.classes[int(os.path.basename(os.path.dirname(p['image'])))]
                  for p in predictions)
    assert 100.0 * correct / 60 == pytest.approx(evaluated, abs=1e-6)
    assert all(len(p['top']) == 5 and p['top'][0]['probability'] >= p['top'][1]['probability'] for p in predictions)


def test_a_stopped_comparison_resumes_with_the_models_it_had_not_finished(tmp_path):
    """tools/analysis_tools/compare_real.py takes a finished model's kept result instead of training it again, and
    only while its budget, config and recipe are the ones it was trained with."""
    from tools.analysis_tools import compare_real
    results = {}
    for name, top1 in (('vheat', 91.5), ('resnet', 90.25)):
        curve = [{'epoch': 1, 'time_s': 60.0, 'top1': top1 - 1, 'top1_ema': top1 - 2},
                 {'epoch': 2, 'time_s': 120.0, 'top1': top1, 'top1_ema': top1 - 1}]
        results[name] = {'params': 3e6, 'flops': 1e7, 'epochs': 2, 'top1': top1, 'top1_ema': top1 - 1,
                         'wall_time_s': 120.0, 'curve': curve}
        compare_real.keep_result(str(tmp_path / name / 'comparison.json'), results[name], 600.0,
                                 os.path.join(CONFIGS, f'{name}.yaml'))
    report, picture = tmp_path / 'report.json', tmp_path / 'report.png'
    compare_real.main(['--models', 'vheat', 'resnet', '--budget-minutes', '10', '--data-path', FASHION,
                       '--output', str(tmp_path), '--json', str(report), '--plot', str(picture)])
    assert json.loads(report.read_text())['models'] == results
    assert picture.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    kept = str(tmp_path / 'vheat' / 'comparison.json')
    vheat_config = os.path.join(CONFIGS, 'vheat.yaml')
    assert compare_real.finished_result(kept, 600.0, vheat_config) == results['vheat']
    assert compare_real.finished_result(kept, 900.0, vheat_config) is None  # another budget: trained again
    assert compare_real.finished_result(kept, 600.0, os.path.join(CONFIGS, 'swin.yaml')) is None  # another config
