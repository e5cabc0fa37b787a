"""Export vHeat to ONNX and check it with onnxruntime; optionally time onnxruntime against eager PyTorch.

    python tools/deployment/export_onnx.py --model vheat_tiny --checkpoint vHeat_tiny.pth --out vheat_tiny.onnx
    python tools/deployment/export_onnx.py --model vheat_tiny --out vheat_tiny.onnx --benchmark --batch 16  # CPU img/s

The exported graph is the inference layout (``infer_init``: decay maps folded) at one resolution (``--img-size``,
square), weights included in the one file; the batch dimension is dynamic. Export another file for another resolution. The export uses torch's
exporter (``torch.onnx.export(dynamo=True)``); onnx, onnxscript and onnxruntime come from
``requirements-export.txt`` (``tools/install.sh`` installs them); the model itself never imports them.
"""
import argparse
import os

import timm
import torch

from classification.core.cli import exit_on_errors, require_file, require_model, require_positive
from classification.core.errors import UsageError
from classification.core.fileio import commit_file
from classification.core.timing import interleaved
from classification.models import enable_cpu_streaming, find_state_dict, load_checkpoint


def parse_model_args(pairs):
    """``key=value`` pairs for ``timm.create_model``; values are Python literals or comma-separated ints."""
    import ast
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition('=')
        if not key or not value:
            raise UsageError(f'--model-args takes key=value, got {pair!r}')
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
        if isinstance(out[key], tuple):
            out[key] = list(out[key])
    return out


def build(args) -> torch.nn.Module:
    try:
        model = timm.create_model(args.model, img_size=args.img_size, **parse_model_args(args.model_args))
    except TypeError as e:
        raise UsageError(f'--model-args: {e}') from None
    if args.checkpoint:
        from classification.engine.checkpoint import load_weights
        checkpoint = load_checkpoint(args.checkpoint)
        load_weights(model, find_state_dict(checkpoint, 'model', args.checkpoint), args.checkpoint)
    model.eval()
    model.infer_init()
    return model


def export(model: torch.nn.Module, img_size: int, path: str) -> None:
    """The ONNX file, written under a temporary name and renamed when complete."""
    example = torch.randn(2, 3, img_size, img_size)
    tmp = path + '.tmp'
    torch.onnx.export(model, (example,), tmp, dynamo=True, input_names=['image'], output_names=['logits'],
                      dynamic_shapes={'x': {0: torch.export.Dim('batch')}}, external_data=False)
    commit_file(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='vheat_tiny', help='timm name: vheat_tiny, vheat_small, vheat_base')
    parser.add_argument('--model-args', nargs='*', help='extra timm.create_model arguments, key=value')
    parser.add_argument('--checkpoint', help='weights (official or ours); random weights without it')
    parser.add_argument('--img-size', type=int, default=224, help='the one resolution the graph is exported for')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--check-batch', type=int, default=2, help='batch of the onnxruntime check')
    parser.add_argument('--atol', type=float, default=1e-4, help='largest |onnxruntime - PyTorch| accepted')
    parser.add_argument('--benchmark', action='store_true', help='time onnxruntime and eager PyTorch on CPU')
    parser.add_argument('--batch', type=int, default=16, help='--benchmark batch')
    parser.add_argument('--rounds', type=int, default=7)
    args = parser.parse_args(argv)
    with exit_on_errors():
        require_model(args.model)
        if args.checkpoint:
            require_file(args.checkpoint, '--checkpoint', 'checkpoint')
        require_positive(args.img_size, '--img-size', minimum=32)
        for flag in ('check_batch', 'batch', 'rounds'):
            require_positive(getattr(args, flag), '--' + flag.replace('_', '-'))
        if args.atol <= 0:
            raise UsageError(f'--atol must be positive, got {args.atol}')
        if not args.out.endswith('.onnx'):
            raise UsageError(f'--out must name a .onnx file, got {args.out}')
        run(args)


def run(args) -> None:
    import onnxruntime

    model = build(args)
    export(model, args.img_size, args.out)
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 2 ** 20:.1f} MiB): {args.model} at '
          f'{args.img_size}x{args.img_size}, dynamic batch')
    session = onnxruntime.InferenceSession(args.out, providers=['CPUExecutionProvider'])
    x = torch.randn(args.check_batch, 3, args.img_size, args.img_size)
    with torch.no_grad():
        diff = (torch.from_numpy(session.run(None, {'image': x.numpy()})[0]) - model(x)).abs().max().item()
    print(f'onnxruntime vs PyTorch: max |diff| {diff:.2e} (batch {args.check_batch})')
    if diff > args.atol:
        raise UsageError(f'--atol: onnxruntime differs from PyTorch by {diff:.2e} > {args.atol}')
    if args.benchmark:
        x = torch.randn(args.batch, 3, args.img_size, args.img_size)
        streaming = enable_cpu_streaming(build(args))
        tasks = {'PyTorch eager': lambda: model(x), 'PyTorch eager, CPU streaming': lambda: streaming(x),
                 'onnxruntime': lambda: session.run(None, {'image': x.numpy()})}
        with torch.inference_mode():
            secs = interleaved(tasks, args.rounds, 2, torch.device('cpu'))
        print(f'images/s at batch {args.batch}, {torch.get_num_threads()} threads (median of {args.rounds} rounds):')
        for name, sec in secs.items():
            print(f'  {name:<30} {args.batch / sec:8.2f}   {secs["PyTorch eager"] / sec:.2f}x eager')


if __name__ == '__main__':
    main()
