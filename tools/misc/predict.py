"""Classify your own images: the top-k classes of each image of a file or a folder.

    python tools/misc/predict.py photo.jpg --model vheat_tiny --pretrained            # the official release weights
    python tools/misc/predict.py photos/ --model vheat_tiny --checkpoint vHeat_tiny.pth --out predictions.csv
    python tools/misc/predict.py photos/ --checkpoint output/fmnist_vheat/default/ckpt_best.pth   # trained here

A checkpoint written by this project's trainer carries its config and class names: the model, its evaluation
transform and the class names come from it (``--model`` is not needed). Otherwise ``--model`` names a timm model
(vHeat's included), the weights come from ``--checkpoint`` (official or ours) or the release (``--pretrained``), the
preprocessing from the model's pretrained config (timm's ``resolve_data_config`` / ``create_transform``) and the
names of 1000 classes from timm's ImageNet info. One line per image on stdout; ``--out`` also writes a CSV or
JSON file (written whole or not at all). An image that cannot be read is named in one ``error:`` line and the
others go on (exit status 1 at the end).
"""
import argparse
import csv
import io
import json
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from classification.core.cli import exit_on_errors, require_device, require_file, require_model, require_positive
from classification.core.errors import UsageError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def find_images(path: str) -> List[str]:
    """``path`` itself, or the images under the folder ``path`` (sorted, recursively)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UsageError(f'IMAGE: no such file or folder: {path}')
    found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise UsageError(f'IMAGE: no images ({", ".join(IMAGE_EXTENSIONS)}) under {path}')
    return found


def trainer_model(checkpoint: dict, source: str, weights: str):
    """(model, transform, image mode, class names) of a checkpoint written by classification/main.py."""
    from yacs.config import CfgNode

    from classification.data import build_transform, input_channels
    from classification.engine.build import build_model
    from classification.engine.checkpoint import load_weights
    from classification.models import find_state_dict
    config = CfgNode.load_cfg(checkpoint['config'])
    model = build_model(config)
    load_weights(model, find_state_dict(checkpoint, weights, source), source)
    classes = list(checkpoint.get('classes') or []) or [str(i) for i in range(config.MODEL.NUM_CLASSES)]
    return model, build_transform(config, is_training=False), 'L' if input_channels(config) == 1 else 'RGB', classes


def timm_model(name: str, checkpoint: Optional[str], pretrained: bool, weights: str):
    """(model, transform, image mode, class names) of a timm model with release or checkpoint weights."""
    import timm
    from timm.data import ImageNetInfo, create_transform, resolve_data_config
    overlay = dict(file=checkpoint) if checkpoint else None
    tag = '.in1k_ema' if weights == 'model_ema' and name.startswith('vheat') and '.' not in name else ''
    model = timm.create_model(name + tag, pretrained=pretrained or bool(checkpoint), pretrained_cfg_overlay=overlay)
    config = resolve_data_config({}, model=model)
    classes = [ImageNetInfo().index_to_description(i) for i in range(1000)] if model.num_classes == 1000 else \
        [str(i) for i in range(model.num_classes)]
    return model, create_transform(**config), 'L' if config['input_size'][0] == 1 else 'RGB', classes


def predict(model, transform: Callable, mode: str, classes: Sequence[str], images: List[str], topk: int, device,
            batch_size: int, on_error: Callable[[str], None]) -> List[Tuple[str, List[Tuple[str, int, float]]]]:
    """[(image, [(class name, class index, probability)] * topk)] for the images that could be read."""
    import torch

    from classification.data import DataError, load_image
    model = model.to(device).eval()
    results = []
    for start in range(0, len(images), batch_size):
        batch, names = [], []
        for path in images[start:start + batch_size]:
            try:
                batch.append(transform(load_image(path, mode)))
                names.append(path)
            except DataError as e:
                on_error(str(e))
        if not batch:
            continue
        with torch.inference_mode():
            probabilities = model(torch.stack(batch).to(device)).float().softmax(-1).cpu()
        top = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
        for path, values, indices in zip(names, top.values.tolist(), top.indices.tolist()):
            results.append((path, [(classes[i] if i < len(classes) else str(i), i, p)
                                   for i, p in zip(indices, values)]))
    return results


def write_results(path: str, results, topk: int) -> None:
    from classification.core.fileio import write_durably
    if path.endswith('.json'):
        data = json.dumps([{'image': image, 'top': [{'class': c, 'index': i, 'probability': round(p, 6)}
                                                    for c, i, p in top]} for image, top in results], indent=1)
    else:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(['image'] + [f'{what}{k}' for k in range(1, topk + 1) for what in ('class', 'probability')])
        for image, top in results:
            writer.writerow([image] + [v for c, _, p in top for v in (c, f'{p:.6f}')])
        data = text.getvalue()
    write_durably(path, data.encode(), 'file')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='an image file or a folder of images')
    parser.add_argument('--model', help='a timm model name, e.g. vheat_tiny (not needed with a checkpoint of this '
                        'project\'s trainer)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--checkpoint', help='weights: our trainer\'s checkpoint, or an official one')
    source.add_argument('--pretrained', action='store_true', help='the release weights (torch hub cache)')
    parser.add_argument('--weights', choices=['model', 'model_ema'], default='model',
                        help='which weights of a training checkpoint (default: model)')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--out', help='also write the results to this .csv or .json file')
    args = parser.parse_args(argv)
    failures = []

    def report(message: str) -> None:
        failures.append(message)
        sys.stderr.write(f'error: {message}\n')
        sys.stderr.flush()

    with exit_on_errors():
        require_positive(args.topk, '--topk')
        require_positive(args.batch_size, '--batch-size')
        device = require_device(args.device)
        if args.out and not args.out.endswith(('.csv', '.json')):
            raise UsageError(f'--out must name a .csv or .json file, got {args.out}')
        images = find_images(args.image)
        checkpoint = None
        if args.checkpoint:
            from classification.models import load_checkpoint
            checkpoint = load_checkpoint(require_file(args.checkpoint, '--checkpoint', 'checkpoint'))
        if checkpoint is not None and isinstance(checkpoint.get('config'), str):
            model, transform, mode, classes = trainer_model(checkpoint, args.checkpoint, args.weights)
        else:
            if not args.model:
                raise UsageError('--model: needed unless --checkpoint is a checkpoint of this project\'s trainer')
            require_model(args.model)
            if not (args.checkpoint or args.pretrained):
                raise UsageError('--checkpoint or --pretrained: a model to predict with needs weights')
            model, transform, mode, classes = timm_model(args.model, args.checkpoint, args.pretrained, args.weights)
        results = predict(model, transform, mode, classes, images, args.topk, device, args.batch_size, report)
        for image, top in results:
            print(f'{image}: ' + '  '.join(f'{rank}. {name} {100 * p:.2f}%' for rank, (name, _, p)
                                           in enumerate(top, start=1)))
        if args.out:
            write_results(args.out, results, args.topk)
            print(f'wrote {args.out} ({len(results)} images)')
    if failures:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
