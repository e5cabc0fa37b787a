"""vHeat3D demos on generated data, on the CPU in minutes (classification/data/volumes.py makes the data).

    python tools/misc/demo3d.py --task video     # direction of moving digits: vHeat3D against a per-frame 2-D vHeat
    python tools/misc/demo3d.py --task volume    # which of 5 shapes is in a noisy 32^3 volume
    python tools/misc/demo3d.py --task segment   # the shape's voxels: a U-Net-style decoder on vHeat3D features

Each task trains for ``--epochs`` (stopping early at ``--budget`` minutes), evaluates on held-out samples and
prints the result; ``--json`` appends it to a file. Small models: depths (1, 1, 2, 1), dims 16 or 24;
the defaults per task (``TASK_DEFAULTS``) are what the README's results were measured with.
"""
import argparse
import json
import os
import time
from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from classification.core.cli import exit_on_errors, require_positive
from classification.core.errors import UsageError
from classification.core.fileio import write_json
from classification.data.volumes import SHAPES, moving_digits, shape_volumes
from classification.models import vHeat, vHeat3D

SMALL = dict(depths=[1, 1, 2, 1], drop_path_rate=0.0, in_chans=1)


class FramewiseVHeat(nn.Module):
    """A 2-D vHeat applied to every frame, its pooled features averaged over time: it sees the frames, not
    their order."""

    def __init__(self, num_classes: int, size: int, dims: int):
        super().__init__()
        self.frames = vHeat(**SMALL, dims=dims, num_classes=0, img_size=size)
        self.fc = nn.Linear(self.frames.num_features, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, channels, time_steps = clips.shape[:3]
        frames = clips.transpose(1, 2).reshape(batch * time_steps, channels, *clips.shape[3:])
        return self.fc(self.frames(frames).view(batch, time_steps, -1).mean(1))


class VolumeSegmenter(nn.Module):
    """vHeat3D features at strides 2, 4, 8, 16 and a U-Net-style decoder: upsample, concatenate the skip, 3x3x3
    convolution, up to stride 2, then a last upsampling to voxel logits."""

    def __init__(self, num_classes: int, size: int, dims: int, width: int = 32):
        super().__init__()
        self.backbone = vHeat3D(**SMALL, dims=dims, num_classes=0, patch_size=(2, 2, 2), volume_size=(size,) * 3)
        dims = self.backbone.dims
        self.lateral = nn.ModuleList(nn.Conv3d(d, width, 1) for d in dims)
        self.fuse = nn.ModuleList(nn.Sequential(nn.Conv3d(2 * width, width, 3, padding=1), nn.GroupNorm(8, width),
                                                nn.GELU()) for _ in dims[:-1])
        self.classifier = nn.Conv3d(width, num_classes, 1)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_intermediates(volumes, intermediates_only=True)
        x = self.lateral[-1](features[-1])
        for i in reversed(range(len(features) - 1)):
            skip = self.lateral[i](features[i])
            x = self.fuse[i](torch.cat([F.interpolate(x, size=skip.shape[2:], mode='trilinear'), skip], 1))
        return F.interpolate(self.classifier(x), size=volumes.shape[2:], mode='trilinear')


def dice(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-volume Dice of the predicted foreground."""
    predicted = logits.argmax(1).bool()
    truth = masks.bool()
    overlap = (predicted & truth).flatten(1).sum(1)
    return 2 * overlap / (predicted.flatten(1).sum(1) + truth.flatten(1).sum(1)).clamp(min=1)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    foreground = logits.softmax(1)[:, 1]
    overlap = (foreground * masks).flatten(1).sum(1)
    return 1 - (2 * overlap / (foreground.flatten(1).sum(1) + masks.flatten(1).sum(1) + 1)).mean()


def cube_symmetry(generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """One of the 48 symmetries of the cube (axes permuted, some flipped), for tensors whose last three
    dimensions are the volume's: a shape's label and mask do not change under it."""
    order = torch.randperm(3, generator=generator).tolist()
    flips = [axis for axis in range(3) if torch.rand(1, generator=generator).item() < 0.5]

    def apply(t: torch.Tensor) -> torch.Tensor:
        lead = t.dim() - 3
        t = t.permute(*range(lead), *(lead + axis for axis in order))
        return t.flip([lead + axis for axis in flips]) if flips else t
    return apply


def train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable, epochs: int,
          batch: int, lr: float, budget_s: float, name: str, augment: bool = False) -> Dict:
    """AdamW with a cosine schedule over ``epochs`` (cut at ``budget_s`` seconds); with ``augment`` each batch
    is seen under a random symmetry of the cube. Returns what it did."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (len(inputs) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    start, done = time.time(), 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for first in range(0, len(inputs) - batch + 1, batch):
            index = order[first:first + batch]
            x, y = inputs[index], targets[index]
            if augment:
                symmetry = cube_symmetry(generator)
                x, y = symmetry(x), (symmetry(y) if y.dim() > 1 else y)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            done += 1
        print(f'{name}: epoch {epoch + 1}/{epochs} loss {total / (len(inputs) // batch):.4f} '
              f'({time.time() - start:.0f} s)', flush=True)
        if time.time() - start > budget_s and epoch + 1 < epochs:
            print(f'{name}: stopped at the time budget after {epoch + 1} epochs', flush=True)
            break
    return dict(epochs=epoch + 1, steps=done, train_seconds=round(time.time() - start, 1))


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The model's outputs for every input, in eval mode."""
    model.eval()
    return torch.cat([model(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def video_task(args) -> Dict:
    clips, labels = moving_digits(args.train + args.test, seed=args.seed)
    train_x, train_y, test_x, test_y = clips[:args.train], labels[:args.train], clips[args.train:], labels[args.train:]
    results = {}
    models = {'vHeat3D': lambda: vHeat3D(**SMALL, dims=args.dims, num_classes=4, patch_size=(2, 4, 4),
                                         downsample_stride=(1, 2, 2), volume_size=tuple(clips.shape[2:])),
              '2-D vHeat per frame, temporal average': lambda: FramewiseVHeat(4, clips.shape[-1], args.dims)}
    for name, build in models.items():
        torch.manual_seed(args.seed)
        model = build()
        run = train(model, train_x, train_y, F.cross_entropy, args.epochs, args.batch, args.lr,
                    args.budget * 60 / 2, name)
        accuracy = (predict(model, test_x).argmax(1) == test_y).float().mean().item()
        results[name] = dict(run, test_accuracy=round(100 * accuracy, 2))
        print(f'{name}: direction accuracy {100 * accuracy:.2f}% on {len(test_x)} held-out clips (chance 25%)')
    return results


def volume_task(args) -> Dict:
    volumes, labels, _ = shape_volumes(args.train + args.test, seed=args.seed)
    torch.manual_seed(args.seed)
    model = vHeat3D(**SMALL, dims=args.dims, num_classes=len(SHAPES), volume_size=tuple(volumes.shape[2:]))
    run = train(model, volumes[:args.train], labels[:args.train], F.cross_entropy, args.epochs, args.batch, args.lr,
                args.budget * 60, 'vHeat3D', augment=True)
    test_y = labels[args.train:]
    predicted = predict(model, volumes[args.train:]).argmax(1)
    accuracy = (predicted == test_y).float().mean().item()
    confusion = torch.zeros(len(SHAPES), len(SHAPES), dtype=torch.long)
    confusion.index_put_((test_y, predicted), torch.ones(len(test_y), dtype=torch.long), accumulate=True)
    print(f'vHeat3D: shape accuracy {100 * accuracy:.2f}% on {len(test_y)} held-out volumes (chance 20%)')
    print('confusion (rows: true ' + ', '.join(SHAPES) + '; columns: predicted)\n' + str(confusion.numpy()))
    return {'vHeat3D': dict(run, test_accuracy=round(100 * accuracy, 2), shapes=SHAPES, confusion=confusion.tolist())}


def segment_task(args) -> Dict:
    volumes, _, masks = shape_volumes(args.train + args.test, seed=args.seed + 1)
    torch.manual_seed(args.seed)
    model = VolumeSegmenter(2, volumes.shape[-1], args.dims)
    run = train(model, volumes[:args.train], masks[:args.train],
                lambda out, y: F.cross_entropy(out, y) + soft_dice_loss(out, y), args.epochs, args.batch, args.lr,
                args.budget * 60, 'vHeat3D + U-Net decoder', augment=True)
    test_masks = masks[args.train:]
    mean_dice = dice(predict(model, volumes[args.train:]), test_masks).mean().item()
    print(f'vHeat3D + U-Net decoder: mean Dice {mean_dice:.4f} on {len(test_masks)} held-out volumes')
    return {'vHeat3D + U-Net decoder': dict(run, test_mean_dice=round(mean_dice, 4))}


TASKS = {'video': video_task, 'volume': volume_task, 'segment': segment_task}
# What the README's results were measured with; each fits in 10 minutes of a 2-core CPU.
TASK_DEFAULTS = {'video': dict(train=1600, test=400, epochs=12, lr=2e-3, dims=16),
                 'volume': dict(train=6400, test=400, epochs=14, lr=1.5e-3, dims=24),
                 'segment': dict(train=1600, test=200, epochs=8, lr=2e-3, dims=16)}


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=sorted(TASKS), required=True)
    parser.add_argument('--train', type=int, help='training samples')
    parser.add_argument('--test', type=int, help='held-out samples')
    parser.add_argument('--epochs', type=int)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--lr', type=float)
    parser.add_argument('--dims', type=int, help='width of the first stage (doubling per stage)')
    parser.add_argument('--budget', type=float, default=9.3, help='minutes of training at most (all models)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', help='append the result to this JSON file')
    args = parser.parse_args(argv)
    for key, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    with exit_on_errors():
        for flag in ('train', 'test', 'epochs', 'batch', 'dims'):
            require_positive(getattr(args, flag), f'--{flag}')
        for flag in ('lr', 'budget'):
            if getattr(args, flag) <= 0:
                raise UsageError(f'--{flag} must be positive, got {getattr(args, flag)}')
        previous = {}
        if args.json and os.path.exists(args.json):
            try:
                previous = json.load(open(args.json))
            except ValueError as e:
                raise UsageError(f'--json: {args.json} is not a JSON file ({e})') from None
        start = time.time()
        result = dict(task=args.task, results=TASKS[args.task](args), threads=torch.get_num_threads(),
                      train=args.train, test=args.test, wall_seconds=round(time.time() - start, 1))
        print(json.dumps(result))
        if args.json:
            write_json(args.json, dict(previous, **{args.task: result}))
    return result


if __name__ == '__main__':
    main()
