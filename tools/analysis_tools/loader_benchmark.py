"""How fast the trainer's own data loaders feed a GPU, for every data layout, and where the time of one image goes.

    python tools/analysis_tools/loader_benchmark.py [--images 768] [--workers 1 2] [--rounds 3]
                                                    [--json docs/loader_benchmark.json]

Generates ImageNet-like JPEGs (500x375, quality 90, about 100 KB: a smooth random picture with noise, which the codec
compresses as it does photographs) as a folder, writes it as the official zip layout, hub-style parquet files and
WebDataset shards (``classification/data/writers.py``, what tools/dataset_converters/ runs), and iterates
``build_loader`` of ``vHeat_tiny_224.yaml`` (the official augmentation: RandomResizedCrop 224, flip, RandAugment m9,
random erasing; mixup/cutmix on each batch, in this process, as the trainer applies it) and its evaluation transform,
with each number of loader workers. Images/s count from the first batch on (the workers' start-up is reported apart),
the median of the rounds, run interleaved. The validation loader gives uint8 batches, which the trainer normalises where
the model is (``BatchNormalize``: on a GPU, off the CPU); ``eval-per-image`` measures the earlier per-image
normalisation beside it. The profile times each step of one image's pipeline in one process.
The cores-per-GPU estimate: vHeat-T's training step at the paper's A100 throughput (1514 images/s in inference,
a training step about a third of that) divided by the training loader's images/s per core (one worker).
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

from classification.core.cli import exit_on_errors, require_positive
from classification.core.errors import UsageError
from classification.core.fileio import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'classification', 'configs', 'vHeat', 'vHeat_tiny_224.yaml')
LAYOUTS = ('folder', 'zip-no', 'zip-full', 'zip-part', 'parquet', 'wds')
KINDS = ('train', 'eval', 'eval-per-image')
PAPER_INFERENCE = 1514  # vHeat-T images/s on an A100 at batch 128 (the paper's table)
TRAINING_SHARE = 3  # a training step (forward, backward, update) costs about three inference passes


def make_images(root: str, count: int, classes: int = 10, seed: int = 0) -> float:
    """``count`` training and ``count // 2`` validation JPEGs in an ImageFolder; their mean size in KB."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    sizes = []
    for split, number in (('train', count), ('val', max(classes, count // 2))):
        for i in range(number):
            folder = os.path.join(root, split, f'class{i % classes:02d}')
            os.makedirs(folder, exist_ok=True)
            base = Image.fromarray(rng.uniform(0, 255, (38, 50, 3)).astype(np.uint8)).resize((500, 375),
                                                                                            Image.BICUBIC)
            pixels = np.asarray(base, np.float32) + rng.normal(0, 16, (375, 500, 3))
            path = os.path.join(folder, f'{i:06d}.JPEG')
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, 'JPEG', quality=90)
            sizes.append(os.path.getsize(path))
    return float(np.mean(sizes)) / 1024


def write_layouts(root: str) -> dict:
    """The folder's copies; {layout: (DATA.DATASET, data path, extra options)}."""
    import folder_to_shards
    import folder_to_zip
    zipped = os.path.join(root, 'zip')
    os.makedirs(zipped)
    for split in ('train', 'val'):
        folder_to_zip.write_split(os.path.join(root, 'folder'), zipped, split)
    for form in ('parquet', 'wds'):
        with open(os.devnull, 'w') as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                folder_to_shards.main([os.path.join(root, 'folder'), os.path.join(root, form), '--format', form,
                                       '--shard-size', '64'])
            finally:
                sys.stdout = stdout
    return {'folder': ('imagenet', os.path.join(root, 'folder'), []),
            'zip-no': ('imagenet', zipped, ['DATA.ZIP_MODE', 'True', 'DATA.CACHE_MODE', 'no']),
            'zip-full': ('imagenet', zipped, ['DATA.ZIP_MODE', 'True', 'DATA.CACHE_MODE', 'full']),
            'zip-part': ('imagenet', zipped, ['DATA.ZIP_MODE', 'True', 'DATA.CACHE_MODE', 'part']),
            'parquet': ('hfds', os.path.join(root, 'parquet'), []),
            'wds': ('wds', os.path.join(root, 'wds'), [])}


def trainer_config(dataset: str, path: str, extra, workers: int, batch: int):
    from classification.config import get_config
    opts = ['DATA.DATASET', dataset, 'DATA.DATA_PATH', path, 'DATA.NUM_WORKERS', str(workers), 'DATA.BATCH_SIZE',
            str(batch), 'MODEL.NUM_CLASSES', '10', *extra]
    return get_config(SimpleNamespace(cfg=CONFIG, opts=opts))


def time_loader(config, kind: str) -> dict:
    """One pass over the training loader (with mixup on each batch, as the trainer applies it) or the validation
    loader (``eval``: uint8 batches, which the trainer normalises on the GPU; ``eval-per-image``: each image
    normalised in the workers, as before): images/s from the first batch on, and the seconds until the first batch
    (worker start-up, the first images)."""
    from classification.data import batches, build_loader, build_transform, train_epochs
    training = kind == 'train'
    _, _, loader_train, loader_val, mixup = build_loader(config, eval_only=not training)
    loader = loader_train if training else loader_val
    if training:
        train_epochs(loader).set_epoch(0)
    elif kind == 'eval-per-image':
        loader.dataset.transform = build_transform(config, False)
    start = time.perf_counter()
    images, first = 0, None
    with batches(loader) as stream:
        for samples, targets in stream:
            if training and mixup is not None:
                samples, targets = mixup(samples, targets)
            if first is None:
                first = time.perf_counter()
            else:
                images += samples.shape[0]
    end = time.perf_counter()
    return {'images_per_s': images / (end - first), 'first_batch_s': first - start}


def profile(config, images: int) -> dict:
    """Milliseconds an image spends in each step of the training and evaluation pipelines (one process, one
    thread): the trainer's per-sample seeding (training), decoding, each transform, collate, and the per-image
    share of the batch steps (mixup/cutmix in training, normalisation of the uint8 evaluation batch)."""
    from classification.data import BatchNormalize, build_transform, decode_image, derived_seed, seed_everything
    from classification.data.build import build_mixup
    folder = os.path.join(config.DATA.DATA_PATH, 'train')
    files = sorted(os.path.join(folder, c, f) for c in sorted(os.listdir(folder))
                   for f in os.listdir(os.path.join(folder, c)))[:images]
    encoded = [open(f, 'rb').read() for f in files]
    mixup, normalize, batch = build_mixup(config), BatchNormalize(config), config.DATA.BATCH_SIZE
    results = {}
    for kind in KINDS:
        steps = {}

        def timed(name, fn, value):
            start = time.perf_counter()
            out = fn(value)
            steps[name] = steps.get(name, 0.0) + time.perf_counter() - start
            return out

        training = kind == 'train'
        transform = build_transform(config, training, normalize=kind != 'eval').transforms
        tensors = []
        for index, data in enumerate(encoded):
            if training:
                timed('per-sample seeding', lambda _: seed_everything(derived_seed(0, 0, index), cuda=False), None)
            value = timed('decode (JPEG to RGB)', lambda d: decode_image(d, files[index]), data)
            for step in transform:
                value = timed(type(step).__name__, step, value)
            tensors.append(value)
        for start in range(0, len(tensors) - batch + 1, batch):
            stacked = timed('collate', torch.utils.data.default_collate, [(t, 0) for t in tensors[start:start + batch]])
            if training:
                timed('mixup/cutmix (batch)', lambda b: mixup(*b), (stacked[0], stacked[1]))
            elif kind == 'eval':
                timed('normalise (batch)', normalize, stacked[0])
        per_image = {name: 1000 * seconds / len(encoded) for name, seconds in steps.items()}
        results[kind] = {'ms_per_image': per_image, 'total_ms': sum(per_image.values())}
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=768, help='training images generated (validation: half as many)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, nargs='+', default=[1, os.cpu_count() or 1],
                        help='loader worker processes to measure with (default: 1 and one per core)')
    parser.add_argument('--layouts', nargs='+', default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--profile-images', type=int, default=256)
    parser.add_argument('--threads', type=int, default=1, help='torch threads of this process')
    parser.add_argument('--json', help='write the results here')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_errors():
        for flag in ('images', 'batch_size', 'rounds', 'profile_images', 'threads'):
            require_positive(getattr(args, flag), '--' + flag.replace('_', '-'))
        require_positive(args.workers, '--workers', minimum=0)
        if args.images < args.batch_size * max(1, max(args.workers)):
            raise UsageError(f'--images {args.images}: fewer than a batch of {args.batch_size} per loader worker')
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix='vheat-loader-') as root:
        import datasets
        datasets.config.HF_DATASETS_CACHE = os.path.join(root, 'hf_cache')  # the parquet copy goes away with root
        started = time.time()
        kilobytes = make_images(os.path.join(root, 'folder'), args.images)
        layouts = write_layouts(root)
        print(f'{args.images} training images of {kilobytes:.0f} KB on average, written in '
              f'{time.time() - started:.0f} s')
        runs = {(layout, kind, workers): [] for layout in args.layouts for kind in KINDS for workers in args.workers}
        for round_index in range(args.rounds):
            for (layout, kind, workers), measured in runs.items():
                dataset, path, extra = layouts[layout]
                config = trainer_config(dataset, path, extra, workers, args.batch_size)
                measured.append(time_loader(config, kind))
                print(f'round {round_index + 1}: {layout:9s} {kind:14s} {workers} worker(s): '
                      f'{measured[-1]["images_per_s"]:7.1f} images/s')
        results = []
        for (layout, kind, workers), measured in runs.items():
            rate = statistics.median(m['images_per_s'] for m in measured)
            results.append({'layout': layout, 'transform': kind, 'workers': workers, 'images_per_s': rate,
                            'images_per_s_per_worker': rate / max(workers, 1),
                            'first_batch_s': statistics.median(m['first_batch_s'] for m in measured)})
        costs = profile(trainer_config(*layouts['folder'][:2], [], 0, args.batch_size), args.profile_images)
    target = PAPER_INFERENCE / TRAINING_SHARE
    one_worker = {r['layout']: r['images_per_s'] for r in results if r['transform'] == 'train' and r['workers'] == 1}
    estimate = {layout: {'train_images_per_s_per_core': rate, 'cores_per_gpu': target / rate}
                for layout, rate in one_worker.items()}
    print(f'{"layout":9s} {"transform":14s} {"workers":>7s} {"images/s":>9s} {"per worker":>10s} {"first batch":>11s}')
    for r in results:
        print(f'{r["layout"]:9s} {r["transform"]:14s} {r["workers"]:7d} {r["images_per_s"]:9.1f} '
              f'{r["images_per_s_per_worker"]:10.1f} {r["first_batch_s"]:10.2f}s')
    for kind, cost in costs.items():
        print(f'profile ({kind}), ms per image: ' + ', '.join(f'{k} {v:.2f}' for k, v in cost['ms_per_image'].items())
              + f'; total {cost["total_ms"]:.2f}')
    for layout, e in estimate.items():
        print(f'{layout}: {e["train_images_per_s_per_core"]:.0f} training images/s per core; vHeat-T at '
              f'{target:.0f} images/s per GPU needs {e["cores_per_gpu"]:.1f} cores per GPU')
    if args.json:
        write_json(args.json, {
            'machine': {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
                        'python': platform.python_version(), 'torch': torch.__version__,
                        'pillow': __import__('PIL').__version__, 'timm': __import__('timm').__version__},
            'settings': {'images': args.images, 'mean_jpeg_kb': kilobytes, 'batch_size': args.batch_size,
                         'rounds': args.rounds, 'config': os.path.relpath(CONFIG, ROOT), 'threads': args.threads},
            'results': results, 'profile': costs,
            'estimate': {'paper_inference_images_per_s': PAPER_INFERENCE, 'training_share': TRAINING_SHARE,
                         'training_images_per_s_per_gpu': target, 'layouts': estimate}})


if __name__ == '__main__':
    main()
