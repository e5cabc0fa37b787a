"""Speed of vHeat-T against timm's Swin-T and ConvNeXt-T, measured in one process, interleaved.

    python tools/analysis_tools/benchmark.py                 # inference (b16@224, b4@512), training step (b8@224)
    python tools/analysis_tools/benchmark.py --compile       # the same, each model also under torch.compile
    python tools/analysis_tools/benchmark.py --dct-sweep     # matmul vs FFT DCT per feature-map size (dct_impl)
    python tools/analysis_tools/benchmark.py --sweep [--quick]   # 224..1024: images/s, memory, GFLOPs, exponents
    python tools/analysis_tools/benchmark.py --volume-sweep      # 3-D: heat conduction vs attention, 16^3..64^3
    python tools/analysis_tools/benchmark.py --train-memory      # one training step: peak memory and time, 224..1024
    python tools/analysis_tools/benchmark.py --saved-bytes       # what autograd keeps of one block, per operation
    python tools/analysis_tools/benchmark.py --step-profile 1024 1   # where a training step's time goes, by kind

On CPU, inference is timed for vHeat-T as it is and with the CPU streaming engine switched on
(``enable_cpu_streaming``), which is what a CPU deployment should use; training always runs the reference model.

Every model gets the same random input. Rounds are interleaved (one timed call of each model per round)
so that drift of the machine (thermal, other load) hits all models alike; the median round is reported.
On CUDA the timings use CUDA events after a synchronisation; on CPU, ``time.perf_counter``.
"""
import argparse
import copy
import json
import os
import sys
from typing import Callable, Dict, List, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from classification.core.cli import exit_on_errors, require_device, require_positive
from classification.core.errors import UsageError
from classification.core.fileio import save_figure, write_json
from classification.core.launch import last_json_line
from classification.core.memory import malloc_returns_large_blocks, peak_memory, saved_bytes
from classification.core.timing import interleaved, timer
from classification.models import enable_cpu_streaming  # noqa: (the import registers vheat_* with timm)
from classification.models.dct import dctn
from classification.models.flops import flop_count

MODELS = {
    'vheat_tiny': 'vHeat-T',
    'swin_tiny_patch4_window7_224': 'Swin-T',
    'convnext_tiny': 'ConvNeXt-T',
}
STREAMING, COMPILED = ' streaming', ' compiled'


def create(name: str, img_size: int, device: torch.device) -> torch.nn.Module:
    kwargs = {'img_size': img_size} if name.startswith('swin') else {}
    return timm.create_model(name, **kwargs).to(device)


def variants(model: torch.nn.Module, label: str, args, device: torch.device, inference: bool) -> Dict:
    """The model under its label, and, where they apply, its CPU-streaming and compiled versions (copies)."""
    out = {label: model}
    if inference and label.startswith('vHeat') and device.type == 'cpu':
        out[label + STREAMING] = enable_cpu_streaming(copy.deepcopy(model))
    if args.compile:  # a graph per input size: symbolic sizes hit pytorch/pytorch#185510 in inductor
        out[label + COMPILED] = torch.compile(copy.deepcopy(model), dynamic=False)
    return out


def inference_speed(args, device, img_size: int, batch: int) -> Dict[str, float]:
    """Images/s of each model in ``torch.inference_mode`` (vHeat after ``infer_init``)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    tasks = {}
    for name, label in MODELS.items():
        model = create(name, img_size, device).eval()
        if name.startswith('vheat'):
            model.infer_init()
        for variant, m in variants(model, label, args, device, inference=True).items():
            tasks[variant] = (lambda m: lambda: m(x))(m)
    with torch.inference_mode():
        secs = interleaved(tasks, args.rounds, args.warmup, device)
    return {label: batch / s for label, s in secs.items()}


def training_speed(args, device, img_size: int, batch: int) -> Dict[str, float]:
    """Images/s of a full training step: forward, cross-entropy, backward, AdamW update."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    tasks = {}
    for name, label in MODELS.items():
        for variant, model in variants(create(name, img_size, device).train(), label, args, device,
                                       inference=False).items():
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(m=model, o=opt):
                o.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()
                o.step()
            tasks[variant] = step
    secs = interleaved(tasks, args.rounds, args.warmup, device)
    return {label: batch / s for label, s in secs.items()}


def report(title: str, speeds: Dict[str, float]) -> Dict[str, float]:
    """Print images/s, and each vHeat-T variant's ratio to the peers run the same way (eager or compiled)."""
    print(f'\n{title}')
    ratios = {}
    for label, ips in speeds.items():
        line = f'  {label:<22} {ips:8.2f} img/s'
        if label.startswith('vHeat'):
            mode = COMPILED if label.endswith(COMPILED) else ''
            for peer in MODELS.values():
                if not peer.startswith('vHeat') and peer + mode in speeds:
                    ratios[f'{label} / {peer + mode}'] = ips / speeds[peer + mode]
                    line += f'   {ips / speeds[peer + mode]:.2f}x {peer + mode}'
        print(line)
    return ratios


def dct_sweep(args, device) -> None:
    """Time one 2-D DCT + inverse pair of a (B, N, N, C) map with each implementation, to choose ``dct_impl``."""
    print('\nDCT2D + IDCT2D, ms per pair (batch %d, %d channels)' % (args.batch_size, 96))
    print(f'  {"N":>5} {"matmul":>9} {"fft":>9}  faster')
    fft_faster = []
    for n in (7, 14, 28, 56, 64, 96, 112, 128, 192, 256):
        x = torch.randn(args.batch_size, n, n, 96, device=device)
        tasks = {impl: (lambda i: lambda: dctn(dctn(x, i), i, inverse=True))(impl) for impl in ('matmul', 'fft')}
        with torch.inference_mode():
            secs = interleaved(tasks, args.rounds, args.warmup, device)
        faster = min(secs, key=secs.get)
        fft_faster.append(faster == 'fft')
        print(f'  {n:>5} {secs["matmul"] * 1e3:9.2f} {secs["fft"] * 1e3:9.2f}  {faster}')
    print("dct_impl='fft' pays on this device only if the sizes where it is faster dominate your feature maps"
          if any(fft_faster) else "dct_impl='matmul' (the default) was faster at every size here")


SWEEP_SIZES = (224, 384, 512, 768, 1024)
SWEEP_MODELS = {  # label: (timm name, create kwargs)
    'vHeat-T': ('vheat_tiny', {}),
    'vHeat-T streaming': ('vheat_tiny', {}),  # CPU only: enable_cpu_streaming
    'vHeat-T fft': ('vheat_tiny', dict(dct_impl='fft')),
    'DeiT-S': ('deit_small_patch16_224', {}),
    'Swin-T': ('swin_tiny_patch4_window7_224', {}),
    'ConvNeXt-T': ('convnext_tiny', {}),
}
QUICK_SIZES = {'Swin-T': (224, 512, 1024), 'ConvNeXt-T': (224, 512, 1024)}
# fvcore does not count FFTs: FLOPs of vHeat-T are the matrix DCT's (the paper's count), which the streaming
# engine computes too. fvcore does not count fused attention either: see ``counted_flops``.
FLOP_LABELS = ('vHeat-T', 'DeiT-S', 'Swin-T', 'ConvNeXt-T')


def sized_model(name: str, kwargs: Dict, img_size: int) -> torch.nn.Module:
    """A timm model for square ``img_size`` inputs.

    DeiT-S: ``img_size`` resizes its position embeddings at creation (16 divides every swept size).
    Swin-T: ``img_size`` sets the attention masks; the window stays 7 (as pretrained) and timm pads feature
    maps that 7 does not divide (e.g. 1024 -> 256/128/64/32 tokens a side). Others take any size.
    """
    if name.startswith(('swin', 'deit')):
        kwargs = dict(kwargs, img_size=img_size)
    return timm.create_model(name, **kwargs)


def counted_flops(model: torch.nn.Module, img_size: int) -> float:
    """GFLOPs by ``flop_count`` (which counts timm's fused attention as its explicit matmuls)."""
    return flop_count(model, (1, 3, img_size, img_size)) / 1e9


def growth_exponent(pixels: List[int], values: List[float]) -> float:
    """Slope of the least-squares line through (log pixels, log value): cost ~ pixels ** slope."""
    if len(pixels) < 2:
        return float('nan')
    slope, _ = np.polyfit(np.log(pixels), np.log(values), 1)
    return float(slope)


def resolution_sweep(args, device) -> Dict:
    """Images/s, peak memory and GFLOPs of every model at every size, interleaved per size; JSON + plot."""
    malloc_returns_large_blocks()
    rounds, warmup = (1, 1) if args.quick else (args.rounds, args.warmup)
    batch = args.sweep_batch
    rows = []
    sweep_models = [lb for lb in SWEEP_MODELS if device.type == 'cpu' or lb != 'vHeat-T streaming']
    for size in SWEEP_SIZES:
        labels = [lb for lb in sweep_models if not args.quick or size in QUICK_SIZES.get(lb, SWEEP_SIZES)]
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size, device=device)
        models, tasks = {}, {}
        for label in labels:
            name, kwargs = SWEEP_MODELS[label]
            models[label] = model = sized_model(name, kwargs, size).to(device).eval()
            if name.startswith('vheat'):
                model.infer_init()
            if label.endswith(STREAMING):
                enable_cpu_streaming(model)
            tasks[label] = (lambda m: lambda: m(x))(model)
        with torch.inference_mode():
            for fn in tasks.values():  # fill lazy caches (DCT matrices, decay maps) before measuring memory
                fn()
            memory = {label: peak_memory(fn, device) for label, fn in tasks.items()}
            secs = interleaved(tasks, rounds, max(warmup - 1, 0), device)
        for label in labels:
            gflops = counted_flops(models[label], size) if label in FLOP_LABELS else None
            rows.append(dict(model=label, size=size, pixels=size * size, batch=batch,
                             images_per_s=batch / secs[label], peak_memory_mib=memory[label] / 2 ** 20,
                             gflops=gflops))
            print(f'  {size:>5} {label:<17} {batch / secs[label]:8.3f} img/s  {memory[label] / 2 ** 20:8.1f} MiB'
                  + (f'  {gflops:7.2f} GFLOPs' if gflops is not None else ''), flush=True)
        del models, tasks
    exponents = {}
    for label in sweep_models:
        mine = [r for r in rows if r['model'] == label]
        pixels = [r['pixels'] for r in mine]
        exponents[label] = dict(
            time=growth_exponent(pixels, [1 / r['images_per_s'] for r in mine]),
            flops=growth_exponent(pixels, [r['gflops'] for r in mine]) if label in FLOP_LABELS else None)
    result = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
                  timm=timm.__version__, quick=args.quick, rounds=rounds, batch=batch,
                  memory_measure='CUDA max_memory_allocated' if device.type == 'cuda' else
                  'peak RSS increase during one forward (VmHWM reset via /proc/self/clear_refs)',
                  rows=rows, exponents=exponents)
    print('\nGrowth exponents (cost ~ pixels ** e): ' + ', '.join(
        f'{lb}: time {e["time"]:.2f}' + (f' FLOPs {e["flops"]:.2f}' if e['flops'] is not None else '')
        for lb, e in exponents.items()))
    json_path = args.json or 'docs/scaling.json'
    write_json(json_path, result)
    plot_sweep(result, args.plot or 'docs/scaling.png')
    print(f'wrote {json_path} and {args.plot or "docs/scaling.png"}')
    return result


TRAIN_MEMORY_MODELS = ('vHeat-T', 'Swin-T', 'ConvNeXt-T', 'DeiT-S')
TRAIN_MEMORY_CASES = ((224, 8), (512, 2), (1024, 1))  # (size, batch)


def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer
                  ) -> Callable[[], None]:
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def _training_model(label: str, size: int, batch: int, grad_checkpointing: bool, device: torch.device):
    name, kwargs = SWEEP_MODELS[label]
    torch.manual_seed(0)
    model = sized_model(name, kwargs, size).to(device).train()
    model.set_grad_checkpointing(grad_checkpointing)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    return training_step(model, x, y, torch.optim.AdamW(model.parameters(), lr=1e-4))


def train_memory_case(label: str, size: int, batch: int, grad_checkpointing: bool, device: torch.device) -> Dict:
    """Peak memory added by one training step (forward, cross-entropy, backward, AdamW) after a warm-up step, of
    one model in this process."""
    malloc_returns_large_blocks()
    step = _training_model(label, size, batch, grad_checkpointing, device)
    step()  # optimizer state, DCT matrices, allocator pools
    return dict(model=label, size=size, batch=batch, grad_checkpointing=grad_checkpointing,
                peak_memory_mib=peak_memory(step, device) / 2 ** 20)


def train_time_case(size: int, batch: int, rounds: int, device: torch.device) -> Dict:
    """Median seconds per training step of every model, plain and checkpointed, interleaved in this process (the
    allocator as it is: glibc's mmap threshold is left alone here, unlike for the memory)."""
    tasks = {f'{label}|{int(checkpointed)}': _training_model(label, size, batch, checkpointed, device)
             for checkpointed in (False, True) for label in TRAIN_MEMORY_MODELS}
    return interleaved(tasks, rounds, 1, device)


def _in_own_process(arguments: List[str], args) -> Dict:
    """The JSON line a worker of this script prints last, run in a process of its own."""
    return last_json_line([sys.executable, os.path.abspath(__file__), '--device', args.device, '--rounds',
                           str(args.rounds), *arguments] + (['--threads', str(args.threads)] if args.threads else []))


def train_memory(args, device: torch.device) -> Dict:
    """Every model x size x gradient checkpointing: the peak memory of a step with each model in a process of its
    own (nothing another model allocated stays resident), the time of a step with the models of a size interleaved
    in one process; JSON, plot and the table printed."""
    rows = []
    for size, batch in TRAIN_MEMORY_CASES:
        seconds = _in_own_process(['--train-time-case', str(size), str(batch)], args)
        for grad_checkpointing in (False, True):
            for label in TRAIN_MEMORY_MODELS:
                row = _in_own_process(['--train-memory-case', label, str(size), str(batch),
                                       str(int(grad_checkpointing))], args)
                row['seconds_per_step'] = seconds[f'{label}|{int(grad_checkpointing)}']
                rows.append(row)
                print(f'  {size:>5} b{batch} {"checkpointed" if grad_checkpointing else "plain":<12} {label:<11}'
                      f' {row["peak_memory_mib"]:8.0f} MiB  {row["seconds_per_step"]:7.2f} s/step', flush=True)
    result = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
                  timm=timm.__version__, rounds=args.rounds,
                  memory_measure='CUDA max_memory_allocated' if device.type == 'cuda' else
                  'peak RSS increase during one training step (VmHWM reset via /proc/self/clear_refs), each model '
                  'in its own process',
                  time_measure=f'median of {args.rounds} steps, the models of a size interleaved in one process',
                  rows=rows, ratios=train_memory_ratios(rows))
    for key, ratio in result['ratios'].items():
        print(f'  {key}: {ratio:.3f}')
    json_path = args.json or 'docs/train_memory.json'
    write_json(json_path, result)
    plot_train_memory(result, args.plot or 'docs/train_memory.png')
    print(f'wrote {json_path} and {args.plot or "docs/train_memory.png"}')
    return result


def train_memory_ratios(rows: List[Dict]) -> Dict[str, float]:
    """vHeat-T's peak memory and step time over each peer's, per size, without gradient checkpointing."""
    plain = {(r['model'], r['size']): r for r in rows if not r['grad_checkpointing']}
    ratios = {}
    for (label, size), row in sorted(plain.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        mine = plain.get(('vHeat-T', size))
        if label != 'vHeat-T' and mine:
            ratios[f'{size} memory vHeat-T / {label}'] = mine['peak_memory_mib'] / row['peak_memory_mib']
            ratios[f'{size} time vHeat-T / {label}'] = mine['seconds_per_step'] / row['seconds_per_step']
    return ratios


def plot_train_memory(result: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, checkpointed in zip(axes, (False, True)):
        for label in TRAIN_MEMORY_MODELS:
            mine = [r for r in result['rows'] if r['model'] == label and r['grad_checkpointing'] == checkpointed]
            ax.plot([f'{r["size"]}, b{r["batch"]}' for r in mine], [r['peak_memory_mib'] for r in mine], marker='o',
                    label=label, linewidth=2.5 if label.startswith('vHeat') else 1.2)
        ax.set_title('gradient checkpointing' if checkpointed else 'plain training step')
        ax.set_ylabel('peak memory of one training step (MiB)')
        ax.set_yscale('log')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f'One training step, float32, {result["device"]} ({result["memory_measure"]})', fontsize=9)
    _save(fig, path)


# the stage-1 block of each model whose saved tensors --saved-bytes lists
SAVED_BYTES_BLOCKS = {'vHeat-T': 'stages.0.blocks.0', 'Swin-T': 'layers.0.blocks.0', 'ConvNeXt-T': 'stages.0.blocks.0'}


def saved_bytes_table(args, device: torch.device) -> Dict:
    """What autograd keeps for backward in one stage-1 block of each model at --saved-bytes-size, batch 1, per
    (module, operation), and each model's total."""
    size = args.saved_bytes_size
    result = dict(size=size, batch=1, torch=torch.__version__, blocks={}, totals_mib={})
    for label, block in SAVED_BYTES_BLOCKS.items():
        name, kwargs = SWEEP_MODELS[label]
        model = sized_model(name, kwargs, size).to(device).train()
        x = torch.randn(1, 3, size, size, device=device)
        saved = saved_bytes(model, lambda: model(x))
        rows = sorted(((module[len(block) + 1:] or '(block)', op, nbytes / 2 ** 20)
                       for (module, op), nbytes in saved.items() if module == block or module.startswith(block + '.')),
                      key=lambda r: -r[2])
        result['blocks'][label] = [dict(module=m, operation=op, mib=round(mib, 2)) for m, op, mib in rows]
        result['totals_mib'][label] = sum(saved.values()) / 2 ** 20
        print(f'\n{label}, {block} at {size}x{size}, batch 1: {sum(r[2] for r in rows):.1f} MiB saved for backward '
              f'(whole model {result["totals_mib"][label]:.0f} MiB)')
        for module, op, mib in rows:
            print(f'  {module:<22} {op:<30} {mib:8.1f} MiB')
    if args.json:
        write_json(args.json, result)
    return result


STEP_PROFILE_MODELS = ('vHeat-T', 'Swin-T', 'ConvNeXt-T')
MATRIX_PRODUCTS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm')
CONVOLUTIONS = ('aten::mkldnn_convolution', 'aten::cudnn_convolution', 'aten::_convolution', 'aten::convolution',
                'aten::conv2d')  # forward: the backward is aten::convolution_backward


def _op_kind(name: str, shapes: List[List[int]], dct_sizes: Sequence[int]) -> str:
    """The kind of work a profiled operation does, from its name and input shapes. The DCT products of vHeat are
    the matrix products whose first operand is an N x N matrix (batched or not) with N a side of a stage's map."""
    if name == 'aten::convolution_backward':
        return 'depthwise convolutions, backward' if shapes[2][1] == 1 else 'dense convolutions, backward'
    if name in CONVOLUTIONS:
        return 'convolutions, forward'
    if name in MATRIX_PRODUCTS:
        first = shapes[0] if name in ('aten::mm', 'aten::bmm') else shapes[1]
        square = len(first) >= 2 and first[-1] == first[-2] and first[-1] in dct_sizes
        return 'DCT products' if square else 'other matrix products'
    return 'everything else'


def profiled_step(label: str, size: int, batch: int, device: torch.device) -> Dict:
    """Seconds of one training step (after a warm-up step) and its operations' own time summed by kind."""
    step = _training_model(label, size, batch, False, device)
    step()
    dct_sizes = [size // 2 ** i for i in range(2, 6)] if label.startswith('vHeat') else []
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    run_once = timer(device)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        seconds = run_once(step)
    kinds: Dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        own = event.self_device_time_total if device.type == 'cuda' else event.self_cpu_time_total
        kind = _op_kind(event.key, event.input_shapes, dct_sizes)
        kinds[kind] = kinds.get(kind, 0.0) + own / 1e6
    return dict(model=label, seconds_profiled=seconds, seconds_by_kind=kinds)


class _DenseConvolutions(TorchDispatchMode):
    """Records the (input shape, weight, stride, padding, dilation) of every dense convolution run under it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[8] == 1:
            self.calls.append((args[0].shape, args[1], list(args[3]), list(args[4]), list(args[5])))
        return func(*args, **(kwargs or {}))


def dense_conv_backward(size: int, batch: int, rounds: int, device: torch.device) -> List[Dict]:
    """vHeat-T's dense 3x3 convolutions (stem, downsampling) at ``size``: seconds of their backward (input and
    weight gradients) on channels-last maps, as the model runs them, and on the same maps contiguous."""
    model = sized_model('vheat_tiny', {}, size).to(device)
    names = {p.data_ptr(): name for name, p in model.named_parameters()}
    with torch.no_grad(), _DenseConvolutions() as convolutions:
        model(torch.randn(batch, 3, size, size, device=device))
    rows = []
    for shape, weight, stride, padding, dilation in convolutions.calls:
        tasks = {}
        for layout in (torch.channels_last, torch.contiguous_format):
            x = torch.randn(shape, device=device).contiguous(memory_format=layout)
            with torch.no_grad():
                grad = F.conv2d(x, weight, None, stride, padding, dilation).contiguous(memory_format=layout)
            tasks[str(layout)] = (lambda x=x, grad=grad: torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], 1, [True, True, False]))
        seconds = interleaved(tasks, rounds, 1, device)
        rows.append(dict(weight=names[weight.data_ptr()], input_shape=list(shape),
                         channels_last_s=seconds[str(torch.channels_last)],
                         contiguous_s=seconds[str(torch.contiguous_format)]))
    return rows


def step_profile(args, device: torch.device) -> Dict:
    """Where a training step's time goes (vHeat-T, Swin-T, ConvNeXt-T, each op's own time summed by kind), and what
    the layout of vHeat-T's dense convolutions costs their backward."""
    size, batch = args.step_profile
    result = dict(size=size, batch=batch, device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
                  steps=[profiled_step(label, size, batch, device) for label in STEP_PROFILE_MODELS],
                  dense_conv_backward=dense_conv_backward(size, batch, args.rounds, device))
    kinds = sorted({kind for row in result['steps'] for kind in row['seconds_by_kind']})
    print(f'\nOne training step at {size}x{size}, batch {batch}: seconds (profiled), own time of its operations by '
          'kind')
    print(f'  {"":<34}' + ''.join(f'{row["model"]:>12}' for row in result['steps']))
    print(f'  {"step":<34}' + ''.join(f'{row["seconds_profiled"]:12.2f}' for row in result['steps']))
    for kind in kinds:
        print(f'  {kind:<34}' + ''.join(f'{row["seconds_by_kind"].get(kind, 0.0):12.2f}' for row in result['steps']))
    print(f'\nvHeat-T\'s dense convolutions, backward (input and weight gradients), median of {args.rounds}: '
          'channels-last maps (as the model runs) / contiguous maps')
    for row in result['dense_conv_backward']:
        print(f'  {row["weight"]:<32} {str(row["input_shape"]):<22} {row["channels_last_s"] * 1e3:8.1f} ms '
              f'{row["contiguous_s"] * 1e3:8.1f} ms  {row["channels_last_s"] / row["contiguous_s"]:5.2f}x')
    total_cl = sum(row['channels_last_s'] for row in result['dense_conv_backward'])
    total_contiguous = sum(row['contiguous_s'] for row in result['dense_conv_backward'])
    print(f'  {"all":<55} {total_cl * 1e3:8.1f} ms {total_contiguous * 1e3:8.1f} ms  '
          f'{total_cl / total_contiguous:5.2f}x')
    if args.json:
        write_json(args.json, result)
    return result


VOLUME_SIDES = (16, 24, 32, 40, 48, 64)


def volume_layers(channels: int, side: int) -> Dict[str, torch.nn.Module]:
    """One token-mixing layer each over a side^3 volume of ``channels``-wide voxels: vHeat3D's heat conduction
    operator (depthwise 3-D conv, linears, DCT along three axes; inference layout) and global attention over all
    voxels (timm's Attention: qkv and output linears around fused scaled_dot_product_attention, 32 channels a
    head)."""
    from timm.models.vision_transformer import Attention

    from classification.models.vheat import HeatConduction
    return {'vHeat3D heat conduction': HeatConduction(channels, (side,) * 3, infer_mode=True),
            'global attention': Attention(channels, num_heads=channels // 32, qkv_bias=True)}


def volume_sweep(args, device) -> Dict:
    """Time and peak memory per volume of one mixing layer, 16^3 to 64^3 voxels; sizes whose predicted time
    passes --volume-budget seconds are skipped (attention grows as voxels^2)."""
    malloc_returns_large_blocks()
    rows, skipped = [], []
    for side in VOLUME_SIDES:
        torch.manual_seed(0)
        x = torch.randn(1, side, side, side, args.volume_channels, device=device)
        for label, layer in volume_layers(args.volume_channels, side).items():
            mine = [r for r in rows if r['model'] == label]
            if len(mine) >= 2:  # predict from the growth so far
                e = growth_exponent([r['voxels'] for r in mine], [r['seconds'] for r in mine])
                if mine[-1]['seconds'] * (side ** 3 / mine[-1]['voxels']) ** e > args.volume_budget:
                    skipped.append(dict(model=label, side=side))
                    print(f'  {side:>3}^3 {label:<24} skipped (predicted over {args.volume_budget:g} s)', flush=True)
                    continue
            layer = layer.to(device).eval()
            tokens = x.flatten(1, 3)
            call = (lambda m=layer: m(x)) if label.startswith('vHeat') else (lambda m=layer: m(tokens))
            with torch.inference_mode():
                call()  # fills the DCT caches, warms the kernels
                seconds = interleaved({label: call}, 1 if side >= 40 else 3, 0, device)[label]
                memory = peak_memory(call, device)
            rows.append(dict(model=label, side=side, voxels=side ** 3, seconds=seconds,
                             peak_memory_mib=memory / 2 ** 20))
            print(f'  {side:>3}^3 {label:<24} {seconds:9.4f} s  {memory / 2 ** 20:8.1f} MiB', flush=True)
    exponents = {}
    for label in volume_layers(args.volume_channels, 16):
        mine = [r for r in rows if r['model'] == label]
        voxels = [r['voxels'] for r in mine]
        exponents[label] = dict(time=growth_exponent(voxels, [r['seconds'] for r in mine]),
                                memory=growth_exponent(voxels, [r['peak_memory_mib'] for r in mine]))
    print('\nGrowth exponents in voxels (cost ~ voxels ** e): ' + ', '.join(
        f'{label}: time {e["time"]:.2f} memory {e["memory"]:.2f}' for label, e in exponents.items()))
    result = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
                  channels=args.volume_channels, rows=rows, skipped=skipped, exponents=exponents,
                  memory_measure='CUDA max_memory_allocated' if device.type == 'cuda' else
                  'peak RSS increase during one call (VmHWM reset via /proc/self/clear_refs)')
    json_path = args.json or 'docs/volume_scaling.json'
    write_json(json_path, result)
    plot_volume_sweep(result, args.plot or 'docs/volume_scaling.png')
    return result


def _loglog_panel(ax, sides: Sequence[int], power: int, unit: str, title: str, legend_size: int) -> None:
    """Log-log axes against side**power (pixels or voxels), ticked at the swept sides."""
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xticks([s ** power for s in sides])
    ax.set_xticklabels([f'{s}{ {2: "²", 3: "³"}[power]}' for s in sides])
    ax.minorticks_off()
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.grid(True, which='major', alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_volume_sweep(result: Dict, path: str) -> None:
    """Two log-log panels against voxels: seconds and peak memory per volume; legends carry the exponents."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (key, title, exp_key) in zip(axes, (('seconds', 'seconds per volume', 'time'),
                                               ('peak_memory_mib', 'peak memory (MiB)', 'memory'))):
        for label, exponents in result['exponents'].items():
            mine = [r for r in result['rows'] if r['model'] == label]
            ax.plot([r['voxels'] for r in mine], [r[key] for r in mine], marker='o', ms=4,
                    label=f'{label}  (e={exponents[exp_key]:.2f})')
        _loglog_panel(ax, VOLUME_SIDES, 3, 'voxels', title, 8)
    fig.suptitle(f'One token-mixing layer over a volume, {result["channels"]} channels, batch 1, {result["device"]} '
                 f'({result["threads"]} threads); e: fitted exponent in voxels', fontsize=9)
    _save(fig, path)
    plt.close(fig)
    print(f'wrote {path}')


def plot_sweep(result: Dict, path: str) -> None:
    """Three log-log panels against pixels: images/s, peak memory, GFLOPs; legends carry the exponents."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = (('images_per_s', 'images / s', 'time'), ('peak_memory_mib', 'peak memory (MiB)', None),
              ('gflops', 'GFLOPs (fvcore)', 'flops'))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (key, title, exp_key) in zip(axes, panels):
        for label in result['exponents']:
            mine = [r for r in result['rows'] if r['model'] == label and r[key] is not None]
            if not mine:
                continue
            legend = label
            if exp_key:
                legend += f'  (e={result["exponents"][label][exp_key]:.2f})'
            style = '--' if label.startswith('vHeat') else '-'
            ax.plot([r['pixels'] for r in mine], [r[key] for r in mine], style, marker='o', ms=4, label=legend)
        _loglog_panel(ax, SWEEP_SIZES, 2, 'pixels', title, 7)
    fig.suptitle(f'Inference, batch {result["batch"]}, {result["device"]} ({result["threads"]} threads); '
                 'e: fitted exponent of time per image or FLOPs in pixels', fontsize=10)
    _save(fig, path)
    plt.close(fig)


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
    parser.add_argument('--json', help='write the measured figures to this file (--sweep: docs/scaling.json)')
    parser.add_argument('--sweep', action='store_true', help='only the resolution sweep (224..1024, batch --sweep-batch)')
    parser.add_argument('--sweep-batch', type=int, default=1)
    parser.add_argument('--plot', help='--sweep / --volume-sweep: where to write the plot '
                                       '(docs/scaling.png / docs/volume_scaling.png)')
    parser.add_argument('--volume-sweep', action='store_true',
                        help='only the 3-D sweep: heat conduction against global attention, 16^3 to 64^3 voxels')
    parser.add_argument('--volume-channels', type=int, default=96)
    parser.add_argument('--volume-budget', type=float, default=90.0,
                        help='--volume-sweep: skip a size whose predicted time per volume is above this (seconds)')
    parser.add_argument('--compile', action='store_true',
                        help='also time every model under torch.compile (default mode), in the same rounds')
    parser.add_argument('--train-memory', action='store_true',
                        help='only the training-memory benchmark: peak memory and time of one training step of '
                             f'{", ".join(TRAIN_MEMORY_MODELS)} at 224 (b8), 512 (b2) and 1024 (b1), with and without '
                             'gradient checkpointing, each in its own process (docs/train_memory.json and .png)')
    parser.add_argument('--train-memory-case', nargs=4, metavar=('MODEL', 'SIZE', 'BATCH', 'CHECKPOINTING'),
                        help=argparse.SUPPRESS)
    parser.add_argument('--train-time-case', nargs=2, metavar=('SIZE', 'BATCH'), help=argparse.SUPPRESS)
    parser.add_argument('--saved-bytes', action='store_true',
                        help='only the bytes autograd saves for backward in one stage-1 block of vHeat-T, Swin-T and '
                             'ConvNeXt-T, per operation')
    parser.add_argument('--saved-bytes-size', type=int, default=1024)
    parser.add_argument('--step-profile', nargs=2, type=int, metavar=('SIZE', 'BATCH'),
                        help='only where the time of one training step goes (vHeat-T, Swin-T, ConvNeXt-T), and the '
                             'backward of vHeat-T\'s dense convolutions on channels-last and on contiguous maps')
    parser.add_argument('--quick', action='store_true',
                        help='shorter --sweep: 1 timed round, Swin-T and ConvNeXt-T only at 224, 512 and 1024')
    args = parser.parse_args(argv)
    with exit_on_errors():
        device = require_device(args.device)
        for flag in ('batch_size', 'train_batch_size', 'hires_batch_size', 'rounds', 'sweep_batch', 'volume_channels'):
            require_positive(getattr(args, flag), '--' + flag.replace('_', '-'))
        for flag in ('img_size', 'hires_size'):
            require_positive(getattr(args, flag), '--' + flag.replace('_', '-'), minimum=32)
        require_positive(args.warmup, '--warmup', minimum=0)
        if args.step_profile:
            require_positive(args.step_profile[0], '--step-profile SIZE', minimum=32)
            require_positive(args.step_profile[1], '--step-profile BATCH')
        require_positive(args.threads, '--threads', minimum=0)
        if args.volume_budget <= 0:
            raise UsageError(f'--volume-budget must be positive, got {args.volume_budget}')
        return run(args, device)


def run(args, device: torch.device) -> Dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        args.warmup = max(args.warmup, 1)  # the first call compiles
    print(f'device={device} threads={torch.get_num_threads()} torch={torch.__version__} timm={timm.__version__}')
    if args.dct_sweep:
        dct_sweep(args, device)
        return {}
    if args.sweep:
        return resolution_sweep(args, device)
    if args.volume_sweep:
        return volume_sweep(args, device)
    if args.train_memory_case:
        label, size, batch, checkpointed = args.train_memory_case
        row = train_memory_case(label, int(size), int(batch), bool(int(checkpointed)), device)
        print(json.dumps(row))
        return row
    if args.train_time_case:
        seconds = train_time_case(int(args.train_time_case[0]), int(args.train_time_case[1]), args.rounds, device)
        print(json.dumps(seconds))
        return seconds
    if args.train_memory:
        return train_memory(args, device)
    if args.saved_bytes:
        return saved_bytes_table(args, device)
    if args.step_profile:
        return step_profile(args, device)
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
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
