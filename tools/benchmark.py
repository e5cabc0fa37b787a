"""Speed of vHeat-T against timm's Swin-T and ConvNeXt-T, measured in one process, interleaved.

    python tools/benchmark.py                 # inference (b16@224, b4@512) and training step (b8@224)
    python tools/benchmark.py --dct-sweep     # matmul vs FFT DCT per feature-map size (sets FFT_MIN_SIZE)

Every model gets the same random input. Rounds are interleaved (one timed call of each model per round)
so that drift of the machine (thermal, other load) hits all models alike; the median round is reported.
On CUDA the timings use CUDA events after a synchronisation; on CPU, ``time.perf_counter``.
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402

import classification.models  # noqa: E402,F401  (registers vheat_* with timm)
from classification.models.dct import dct2d  # noqa: E402

PEERS = {
    'vheat_tiny': 'vHeat-T',
    'swin_tiny_patch4_window7_224': 'Swin-T',
    'convnext_tiny': 'ConvNeXt-T',
}


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn`` once and returns its duration in seconds."""
    if device.type == 'cuda':
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return run


def interleaved(tasks: Dict[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device
                ) -> Dict[str, float]:
    """Median seconds per call of each task, timing one call of every task per round."""
    run = timer(device)
    for _ in range(warmup):
        for fn in tasks.values():
            run(fn)
    times: Dict[str, List[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            times[name].append(run(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def create(name: str, img_size: int, device: torch.device) -> torch.nn.Module:
    kwargs = {'img_size': img_size} if name.startswith('swin') else {}
    return timm.create_model(name, **kwargs).to(device)


def inference_speed(args, device, img_size: int, batch: int) -> Dict[str, float]:
    """Images/s of each model in ``torch.inference_mode`` (vHeat also after ``infer_init``)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    tasks = {}
    for name in PEERS:
        model = create(name, img_size, device).eval()
        if name.startswith('vheat'):
            model.infer_init()
        tasks[name] = (lambda m: lambda: m(x))(model)
    with torch.inference_mode():
        secs = interleaved(tasks, args.rounds, args.warmup, device)
    return {name: batch / s for name, s in secs.items()}


def training_speed(args, device, img_size: int, batch: int) -> Dict[str, float]:
    """Images/s of a full training step: forward, cross-entropy, backward, AdamW update."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    tasks = {}
    for name in PEERS:
        model = create(name, img_size, device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(m=model, o=opt):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            o.step()
        tasks[name] = step
    secs = interleaved(tasks, args.rounds, args.warmup, device)
    return {name: batch / s for name, s in secs.items()}


def report(title: str, speeds: Dict[str, float]) -> Dict[str, float]:
    """Print images/s and vHeat-T's ratio to each peer; return the ratios."""
    print(f'\n{title}')
    ratios = {}
    for name, ips in speeds.items():
        line = f'  {PEERS[name]:<11} {ips:8.2f} img/s'
        if name != 'vheat_tiny':
            ratios[PEERS[name]] = speeds['vheat_tiny'] / ips
            line += f'   vHeat-T / {PEERS[name]} = {ratios[PEERS[name]]:.2f}x'
        print(line)
    return ratios


def dct_sweep(args, device) -> None:
    """Time one 2-D DCT + inverse pair of a (B, N, N, C) map with each implementation."""
    print('\nDCT2D + IDCT2D, ms per pair (batch %d, %d channels)' % (args.batch_size, 96))
    print(f'  {"N":>5} {"matmul":>9} {"fft":>9}  faster')
    for n in (7, 14, 28, 56, 64, 96, 112, 128, 192, 256):
        x = torch.randn(args.batch_size, n, n, 96, device=device)
        tasks = {impl: (lambda i: lambda: dct2d(dct2d(x, i), i, inverse=True))(impl) for impl in ('matmul', 'fft')}
        with torch.inference_mode():
            secs = interleaved(tasks, args.rounds, args.warmup, device)
        faster = min(secs, key=secs.get)
        print(f'  {n:>5} {secs["matmul"] * 1e3:9.2f} {secs["fft"] * 1e3:9.2f}  {faster}')


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch-size', type=int, default=16, help='inference batch at --img-size')
    parser.add_argument('--train-batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--hires-size', type=int, default=512)
    parser.add_argument('--hires-batch-size', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds (median reported)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    parser.add_argument('--skip-train', action='store_true')
    parser.add_argument('--dct-sweep', action='store_true', help='only compare the two DCT implementations')
    parser.add_argument('--json', help='write the measured figures to this file')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'device={device} threads={torch.get_num_threads()} torch={torch.__version__} timm={timm.__version__}')
    if args.dct_sweep:
        dct_sweep(args, device)
        return {}
    results = {}
    speeds = inference_speed(args, device, args.img_size, args.batch_size)
    results['inference'] = dict(images_per_s=speeds, ratios=report(
        f'Inference, batch {args.batch_size} at {args.img_size}x{args.img_size}', speeds))
    speeds = inference_speed(args, device, args.hires_size, args.hires_batch_size)
    results['inference_hires'] = dict(images_per_s=speeds, ratios=report(
        f'Inference, batch {args.hires_batch_size} at {args.hires_size}x{args.hires_size}', speeds))
    if not args.skip_train:
        speeds = training_speed(args, device, args.img_size, args.train_batch_size)
        results['train'] = dict(images_per_s=speeds, ratios=report(
            f'Training step (forward, backward, AdamW), batch {args.train_batch_size} at {args.img_size}', speeds))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
