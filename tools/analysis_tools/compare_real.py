"""vHeat against its peers on real images: Fashion-MNIST, one recipe, one CPU budget per model, one after another.

    python tools/analysis_tools/compare_real.py          # every model of classification/configs/fashion_mnist/
    python tools/analysis_tools/compare_real.py --models vheat resnet --budget-minutes 10 --data-path DIR

Each model's config inherits ``classification/configs/fashion_mnist/base.yaml`` (data, augmentation, optimizer,
schedule, EMA) and is trained by the trainer (``classification/main.py``) on the 60,000 training images, evaluated
on the 10,000 test images after every epoch. Every model trains the recipe's epochs; a model that could not finish
them within ``--budget-minutes`` (timed on a short calibration run first) trains as many as fit instead, with the
whole schedule compressed into them. A line per epoch reports progress. Writes ``--json`` (per model: params,
FLOPs, epochs, wall time, final and best top-1 of the model and of its EMA, the test-accuracy curve) and ``--plot``
(test accuracy against epochs and against time), each written whole or not at all.

Each finished model's result is also kept as ``<output>/<model>/comparison.json``; a comparison that was
stopped resumes with the next model, taking a finished one's result from there when its budget, its config and the
recipe are unchanged (``--retrain`` trains them all again).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.core.cli import exit_on_errors, require_choice, require_folder, require_positive  # noqa
from classification.core.errors import UsageError  # noqa
from classification.core.fileio import write_durably

CONFIGS = os.path.join(ROOT, 'classification', 'configs', 'fashion_mnist')
MODELS = ('vheat', 'swin', 'deit', 'convnext', 'resnet')
LABELS = {'vheat': 'vHeat', 'swin': 'Swin', 'deit': 'DeiT', 'convnext': 'ConvNeXt', 'resnet': 'ResNet-18'}
TRAIN_IMAGES = 60000
CALIBRATION_IMAGES = 4096
# published test accuracies (%), for the README table beside the measured ones
REFERENCES = {
    'two-layer CNN (Fashion-MNIST benchmark table)': 91.6,
    'ResNet-18 with augmentation (Fashion-MNIST benchmark table)': 94.9,
    'WRN-28-10 with random erasing (Zhong et al., 2017)': 96.35,
}
_ACCURACY = re.compile(r'Epoch (\d+): (EMA )?accuracy ([\d.]+)%')
_RATE = re.compile(r'EPOCH \d+ training takes \S+ \(([\d.]+) images/s\)')


def model_size(config_path: str, data_path: str):
    """(params, FLOPs at the config's input size) of the model a config builds."""
    from classification.config import get_config
    from classification.data import input_channels
    from classification.engine.build import build_model
    from classification.models.flops import flop_count, param_count
    config = get_config(SimpleNamespace(cfg=config_path, opts=['DATA.DATA_PATH', data_path]))
    model = build_model(config)
    size = config.DATA.IMG_SIZE
    return param_count(model), flop_count(model, (1, input_channels(config), size, size)), config.TRAIN.EPOCHS


def train(config_path: str, output: str, opts: List[str], on_line) -> float:
    """Run the trainer on one config; ``on_line(line, seconds since start)`` sees every log line. Its wall time."""
    command = [sys.executable, os.path.join(ROOT, 'classification', 'main.py'), '--cfg', config_path,
               '--output', output, '--opts', 'TRAIN.AUTO_RESUME', 'False', *opts]
    start = time.time()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    tail = []
    for line in process.stdout:
        tail = (tail + [line])[-20:]
        on_line(line, time.time() - start)
    if process.wait() != 0:
        raise RuntimeError(f'training {config_path} failed (exit status {process.returncode}): '
                           f'{"".join(tail).strip().splitlines()[-1]}')
    return time.time() - start


def calibrate(config_path: str, output: str, data_opts: List[str]) -> float:
    """Seconds one epoch of the full training set takes, evaluation included: one short run on
    CALIBRATION_IMAGES images, timed."""
    seen: Dict[str, float] = {}

    def watch(line: str, elapsed: float) -> None:
        rate = _RATE.search(line)
        if rate:
            seen['rate'], seen['trained'] = float(rate.group(1)), elapsed
        if _ACCURACY.search(line):  # the model's, then its EMA's evaluation
            seen['evaluated'] = elapsed

    train(config_path, output, [*data_opts, 'TRAIN.EPOCHS', '1', 'TRAIN.WARMUP_EPOCHS', '0',
                                'DATA.TRAIN_SUBSET', str(CALIBRATION_IMAGES)], watch)
    return TRAIN_IMAGES / seen['rate'] + (seen['evaluated'] - seen['trained'])


def run_model(name: str, config_path: str, budget_s: float, output: str, data_path: str) -> dict:
    params, flops, recipe_epochs = model_size(config_path, data_path)
    data_opts = ['DATA.DATA_PATH', data_path]
    started = time.time()
    per_epoch = calibrate(config_path, os.path.join(output, 'calibration'), data_opts)
    calibration = time.time() - started
    left = budget_s - calibration
    epochs = max(1, min(recipe_epochs, int(left // per_epoch)))
    print(f'[{name}] {params / 1e6:.2f}M params, {flops / 1e6:.2f} MFLOPs; about {per_epoch:.0f} s an epoch: '
          f'{epochs} of the recipe\'s {recipe_epochs} epochs in the {budget_s / 60:.0f}-minute budget', flush=True)
    curve: List[dict] = []

    def watch(line: str, elapsed: float) -> None:
        match = _ACCURACY.search(line)
        if not match:
            return
        epoch, ema, value = int(match.group(1)), bool(match.group(2)), float(match.group(3))
        if not ema:
            curve.append({'epoch': epoch + 1, 'time_s': round(elapsed, 1), 'top1': value})
            return
        curve[-1]['top1_ema'] = value
        print(f'[{name}] epoch {epoch + 1}/{epochs}: top-1 {curve[-1]["top1"]:.2f}%, EMA {value:.2f}% '
              f'({elapsed / 60:.1f} min)', flush=True)

    opts = [*data_opts, 'TRAIN.EPOCHS', str(epochs), 'TRAIN.WARMUP_EPOCHS', str(min(epochs - 1, 1))]
    wall = train(config_path, output, opts, watch)
    return {'config': os.path.relpath(config_path, ROOT), 'params': params, 'flops': flops, 'epochs': epochs,
            'recipe_epochs': recipe_epochs, 'wall_time_s': round(wall, 1), 'calibration_s': round(calibration, 1),
            'top1': curve[-1]['top1'], 'top1_ema': curve[-1]['top1_ema'],
            'best_top1': max(c['top1'] for c in curve), 'best_top1_ema': max(c['top1_ema'] for c in curve),
            'curve': curve}


def finished_result(path: str, budget_s: float, config_path: str):
    """The result kept at ``path`` by an earlier comparison, if it was trained with this budget and config."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        kept = json.load(f)
    if kept.get('budget_s') != budget_s or kept.get('configs') != config_texts(config_path):
        return None
    return kept['result']


def config_texts(config_path: str) -> Dict[str, str]:
    """The text of the model's config and of the recipe it inherits, what a kept result was trained with."""
    texts = {}
    for path in (config_path, os.path.join(CONFIGS, 'base.yaml')):
        with open(path) as f:
            texts[os.path.basename(path)] = f.read()
    return texts


def keep_result(path: str, result: dict, budget_s: float, config_path: str) -> None:
    kept = {'budget_s': budget_s, 'configs': config_texts(config_path), 'result': result}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_durably(path, (json.dumps(kept, indent=1) + '\n').encode(), 'file')


def plot(results: Dict[str, dict], path: str) -> None:
    import io

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, result in results.items():
        label = f'{LABELS.get(name, name)} ({result["params"] / 1e6:.2f}M, {result["flops"] / 1e6:.1f} MFLOPs)'
        epochs = [c['epoch'] for c in result['curve']]
        accuracy = [c['top1_ema'] for c in result['curve']]
        by_epoch.plot(epochs, accuracy, marker='o', markersize=3, label=label)
        by_time.plot([c['time_s'] / 60 for c in result['curve']], accuracy, marker='o', markersize=3, label=label)
    for axis, xlabel in ((by_epoch, 'epoch'), (by_time, 'wall time (minutes, 2-core CPU)')):
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    by_epoch.set_ylabel('Fashion-MNIST test top-1 of the EMA weights (%)')
    values = [c['top1_ema'] for r in results.values() for c in r['curve']]
    by_epoch.set_ylim(max(min(values) - 1, max(values) - 15), max(values) + 1)  # the first epochs' EMA is far down
    by_epoch.legend(fontsize=8, loc='lower right')
    fig.suptitle('One recipe on Fashion-MNIST (10,000 test images)')
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110)
    write_durably(path, buffer.getvalue(), 'file')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(MODELS), help=f'configs to compare: {", ".join(MODELS)}')
    parser.add_argument('--budget-minutes', type=float, default=45.0, help='CPU budget per model (default 45)')
    parser.add_argument('--data-path', default='/usr/share/datasets/fashion-mnist',
                        help='the four Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist)')
    parser.add_argument('--output', default=os.path.join(ROOT, 'output', 'fashion_mnist'),
                        help='where each model\'s trainer output goes')
    parser.add_argument('--retrain', action='store_true',
                        help='train every model again, even one an earlier comparison finished')
    parser.add_argument('--json', default=os.path.join(ROOT, 'docs', 'fashion_mnist.json'))
    parser.add_argument('--plot', default=os.path.join(ROOT, 'docs', 'fashion_mnist.png'))
    args = parser.parse_args(argv)
    with exit_on_errors():
        for name in args.models:
            require_choice(name, '--models', MODELS)
        require_positive(args.budget_minutes, '--budget-minutes', minimum=1)
        require_folder(args.data_path, '--data-path', 'Fashion-MNIST folder (apt-get install dataset-fashion-mnist)')
        from classification.data.standard import standard_dataset
        standard_dataset('fashion_mnist', args.data_path, 'val')  # the files are there and readable
        results = {}
        budget_s = args.budget_minutes * 60
        for name in args.models:
            config_path = os.path.join(CONFIGS, f'{name}.yaml')
            kept = os.path.join(args.output, name, 'comparison.json')
            result = None if args.retrain else finished_result(kept, budget_s, config_path)
            if result is None:
                try:
                    result = run_model(name, config_path, budget_s, os.path.join(args.output, name), args.data_path)
                except RuntimeError as e:
                    raise UsageError(str(e)) from None
                keep_result(kept, result, budget_s, config_path)
            else:
                print(f'[{name}] finished by an earlier comparison ({kept})', flush=True)
            results[name] = r = result
            print(f'[{name}] done: top-1 {r["top1"]:.2f}%, EMA {r["top1_ema"]:.2f}% after {r["epochs"]} epochs, '
                  f'{r["wall_time_s"] / 60:.1f} min', flush=True)
        report = {'data': 'Fashion-MNIST: 60,000 training and 10,000 test images (the test images evaluated)',
                  'recipe': 'classification/configs/fashion_mnist/base.yaml', 'budget_minutes': args.budget_minutes,
                  'machine': f'{os.cpu_count()} CPU cores', 'models': results, 'references': REFERENCES}
        write_durably(args.json, (json.dumps(report, indent=1) + '\n').encode(), 'file')
        plot(results, args.plot)
        print(f'wrote {args.json} and {args.plot}')


if __name__ == '__main__':
    main()
