"""Train and evaluate vHeat on an ImageNet-style folder (after Swin-Transformer's main.py).

    python classification/main.py --cfg classification/configs/vHeat/vHeat_tiny_224.yaml --data-path DATA
    python -m torch.distributed.launch --nproc_per_node=8 classification/main.py ...   # or torchrun
    python classification/main.py --cfg ... --data-path DATA --eval --resume vHeat_tiny.pth [--model_ema True]
"""
import argparse
import contextlib
import copy
import datetime
import json
import os
import signal
import sys
import time
from typing import Optional, Tuple

if __package__ in (None, ''):  # run as a script: make `classification` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import AverageMeter, ModelEmaV3
from torch.utils.tensorboard import SummaryWriter

from classification.config import ConfigError, get_config, scale_learning_rates, total_batch
from classification.data import DataError, batches, build_loader, derived_seed, seed_everything
from classification.models import UnsafeCheckpointError, build_model, enable_cpu_streaming
from classification.models.flops import flop_count, param_count
from classification.utils import (CheckpointError, auto_resume_file, create_logger, exit_with_error,
                                  init_distributed, load_weights, save_checkpoint, shared_checkpoint)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite)."""


class Preempted(Exception):
    """A stop signal arrived; the state was saved at a step boundary and the run ends."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Within the context, SIGTERM and SIGUSR1 (what clusters such as SLURM send ahead of a kill) only record
    their arrival: the trainer stops at the next step boundary, after saving where it was."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received, self._previous = 0, {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> 'StopSignals':
        self._previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def str2bool(value: str) -> bool:
    if value.lower() in ('true', '1', 'yes'):
        return True
    if value.lower() in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {value!r}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser('vHeat training and evaluation', add_help=True)
    parser.add_argument('--cfg', type=str, metavar='FILE', help='path to a config file')
    parser.add_argument('--opts', nargs='+', default=None, help='override config options: KEY VALUE ...')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--data-path', type=str, help='folder with train/ and val/')
    parser.add_argument('--resume', help='resume from (or, with --eval, evaluate) this checkpoint')
    parser.add_argument('--pretrained', help='initialise the model weights from this checkpoint')
    parser.add_argument('--accumulation-steps', type=int, help='gradient accumulation steps')
    parser.add_argument('--use-checkpoint', action='store_true', help='gradient checkpointing to save memory')
    parser.add_argument('--disable_amp', action='store_true', help='no mixed precision')
    parser.add_argument('--compile', action='store_true', help='torch.compile the network (training and evaluation)')
    parser.add_argument('--cpu-streaming', action='store_true',
                        help='CPU inference through the streaming engine (enable_cpu_streaming)')
    parser.add_argument('--output', type=str, help='root of the outputs: <output>/<MODEL.NAME>/<tag>/')
    parser.add_argument('--tag', help='tag of the experiment')
    parser.add_argument('--eval', action='store_true', help='evaluate on val only')
    parser.add_argument('--throughput', action='store_true', help='measure inference throughput only')
    parser.add_argument('--model_ema', type=str2bool, help='keep (and evaluate) an EMA of the weights')
    parser.add_argument('--model_ema_decay', type=float, help='EMA decay')
    parser.add_argument('--local-rank', '--local_rank', dest='local_rank', type=int, default=0,
                        help='set by torch.distributed.launch (torchrun sets LOCAL_RANK instead)')
    return parser.parse_args(argv)


def build_criterion(config, mixup_fn):
    if mixup_fn is not None:  # mixup makes soft targets, label smoothing included
        return SoftTargetCrossEntropy()
    if config.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    return torch.nn.CrossEntropyLoss()


def build_scheduler(config, optimizer, batches_per_epoch: int) -> CosineLRScheduler:
    """Linear warm-up, then cosine decay, both stepped per optimizer update."""
    steps_per_epoch = max(1, batches_per_epoch // config.TRAIN.ACCUMULATION_STEPS)
    warmup_steps = config.TRAIN.WARMUP_EPOCHS * steps_per_epoch
    return CosineLRScheduler(optimizer, t_initial=max(1, (config.TRAIN.EPOCHS - config.TRAIN.WARMUP_EPOCHS)
                                                      * steps_per_epoch),
                             lr_min=config.TRAIN.MIN_LR, warmup_lr_init=config.TRAIN.WARMUP_LR,
                             warmup_t=warmup_steps, cycle_limit=1, t_in_epochs=False, warmup_prefix=True)


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class StepStats:
    """Loss, gradient norm and finiteness of the steps since the last sync point, kept on the device: a step
    needs no host synchronisation and no collective of its own. At a sync point one collective tells every rank
    the first step whose loss was not finite on any rank, and whether any rank received a stop signal, so that
    all stop together."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.norm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.first_bad_step = torch.full((), float('inf'), dtype=torch.float64, device=self.device)
        self.losses = self.norms = 0

    def add_loss(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss, 0.0)
        self.first_bad_step = torch.where(finite, self.first_bad_step, self.first_bad_step.clamp(max=step))
        self.losses += 1

    def add_norm(self, norm: torch.Tensor) -> None:
        self.norm_sum += norm.detach().double()
        self.norms += 1

    def agree(self, stop_signal: int) -> Tuple[Optional[int], int]:
        """(first step of any rank with a non-finite loss or None, the stop signal any rank received or 0)."""
        state = torch.stack([-self.first_bad_step, torch.tensor(float(stop_signal), dtype=torch.float64,
                                                                device=self.device)])
        if dist.is_initialized():
            dist.all_reduce(state, op=dist.ReduceOp.MAX)
        neg_bad, stop = state.tolist()
        return (None if neg_bad == float('-inf') else int(-neg_bad)), int(stop)

    def means(self) -> Tuple[float, float]:
        return (self.loss_sum.item() / max(self.losses, 1), self.norm_sum.item() / max(self.norms, 1))


def grad_sync(model: torch.nn.Module, sync: bool):
    """DDP all-reduces the gradients in backward; on the micro-steps of an accumulation window that do not step
    the optimizer it need not (``no_sync``): the window's summed gradients are all-reduced once, at its end."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def train_one_epoch(config, ctx, epoch: int, start_step: int = 0) -> Optional[int]:
    """One pass over the training split from batch ``start_step``: AMP, accumulation, clipping, per-step LR and
    EMA updates. Returns None at the end of the epoch, or the number of batches done if a stop signal came.

    Each step seeds torch, numpy and ``random`` from (SEED, epoch, step, rank) (mixup, cutmix, drop path), as the
    loader seeds each sample, so a run resumed at any step continues exactly. Losses and gradient norms stay on
    the device; every PRINT_FREQ optimizer steps and at the epoch's last batch they are logged and the ranks agree
    on non-finite losses and stop signals (a single process looks at its signals at every optimizer step).
    """
    loader, logger, num_steps = ctx['loader_train'], ctx['logger'], ctx['batches_per_epoch']
    ctx['model'].train()
    ctx['optimizer'].zero_grad()
    start = time.time()
    with batches(loader) as stream:
        stopped = _train_steps(config, ctx, epoch, start_step, stream)
    if stopped is not None:
        return stopped
    epoch_time = time.time() - start
    images = (num_steps - start_step) * config.DATA.BATCH_SIZE * ctx['world_size']
    logger.info(f'EPOCH {epoch} training takes {format_eta(epoch_time)} ({images / epoch_time:.1f} images/s)')
    if ctx['writer'] is not None:
        ctx['writer'].add_scalar('train/throughput', images / epoch_time, epoch)
    return None


def _train_steps(config, ctx, epoch: int, start_step: int, stream) -> Optional[int]:
    """The steps of :func:`train_one_epoch`; the number of batches done if a stop was agreed, else None."""
    model, optimizer, scheduler, scaler = ctx['model'], ctx['optimizer'], ctx['scheduler'], ctx['scaler']
    mixup_fn, criterion, logger = ctx['mixup_fn'], ctx['criterion'], ctx['logger']
    accum = config.TRAIN.ACCUMULATION_STEPS
    max_norm = config.TRAIN.CLIP_GRAD if config.TRAIN.CLIP_GRAD > 0 else float('inf')
    num_steps = ctx['batches_per_epoch']
    single = not dist.is_initialized()
    stats, last_sync = StepStats(ctx['device']), time.time()
    for idx, (samples, targets) in enumerate(stream, start=start_step):
        seed_everything(derived_seed(config.SEED, epoch, idx, ctx['rank']))
        samples = samples.to(ctx['device'], non_blocking=True)
        targets = targets.to(ctx['device'], non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        window_end = (idx + 1) % accum == 0
        with grad_sync(model, window_end):
            with torch.autocast(ctx['device'].type, dtype=ctx['amp_dtype'], enabled=ctx['amp']):
                outputs = model(samples)
            loss = criterion(outputs.float(), targets)
            scaler.scale(loss / accum).backward()
        stats.add_loss(loss, idx)
        if window_end:
            scaler.unscale_(optimizer)
            stats.add_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            update = (epoch * num_steps + idx) // accum  # the official trainer's step index
            scheduler.step_update(update)
            if ctx['ema'] is not None:
                ctx['ema'].update(ctx['model_without_ddp'], step=update)
        updates = (idx + 1) // accum
        log_point = (window_end and (updates == 1 or updates % config.PRINT_FREQ == 0)) or idx == num_steps - 1
        if not (log_point or (single and window_end and ctx['signals'].received)):
            continue
        bad, stop = stats.agree(ctx['signals'].received)
        if bad is not None:
            raise TrainingError(f'loss is not finite at epoch {epoch} step {bad} (global step '
                                f'{epoch * num_steps + bad}); stopped, the last checkpoint was kept')
        loss_avg, norm_avg = stats.means()
        now = time.time()
        per_batch = (now - last_sync) / max(stats.losses, 1)
        lr = optimizer.param_groups[0]['lr']
        logger.info(f'Train: [{epoch}/{config.TRAIN.EPOCHS}][{idx + 1}/{num_steps}]\t'
                    f'eta {format_eta(per_batch * (num_steps - idx - 1))} lr {lr:.6f}\t'
                    f'time/batch {per_batch:.4f}\tloss {loss_avg:.4f}\tgrad_norm {norm_avg:.4f}')
        if ctx['writer'] is not None:
            ctx['writer'].add_scalar('train/loss', loss_avg, epoch * num_steps + idx)
            ctx['writer'].add_scalar('train/lr', lr, epoch * num_steps + idx)
        stats.reset()
        last_sync = now
        if stop and window_end and idx < num_steps - 1:
            ctx['signals'].received = stop
            return idx + 1
    return None


@torch.no_grad()
def validate(config, ctx, model, name='model'):
    """Top-1/top-5 accuracy (%) and loss on the val split. Each process evaluates its own shard (every image on
    exactly one process, see ``ShardSampler``) and the sums are all-reduced once: the result and the image count
    do not depend on the number of processes. ``model`` is never the DDP wrapper: shards may differ in length."""
    logger, loader = ctx['logger'], ctx['loader_val']
    model.eval()
    topk = (1, min(5, config.MODEL.NUM_CLASSES))
    totals = torch.zeros(4, dtype=torch.float64, device=ctx['device'])  # loss sum, top1, top5, count
    batch_time = AverageMeter()
    end = time.time()
    with batches(loader) as stream:
        for idx, (images, targets) in enumerate(stream):
            images = images.to(ctx['device'], non_blocking=True)
            targets = targets.to(ctx['device'], non_blocking=True)
            with torch.autocast(ctx['device'].type, dtype=ctx['amp_dtype'], enabled=ctx['amp']):
                output = model(images)
            output = output.float()
            correct = output.topk(topk[1], dim=1).indices.eq(targets[:, None])
            totals += torch.stack([torch.nn.functional.cross_entropy(output, targets, reduction='sum').double(),
                                   correct[:, :1].sum().double(), correct.sum().double(),
                                   torch.tensor(float(targets.numel()), dtype=torch.float64, device=ctx['device'])])
            batch_time.update(time.time() - end)
            end = time.time()
            if idx % config.PRINT_FREQ == 0 and idx > 0:
                logger.info(f'Test ({name}): [{idx}/{len(loader)}]\teta '
                            f'{format_eta(batch_time.avg * (len(loader) - idx - 1))}')
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss, acc1, acc5 = (totals[:3] / totals[3].clamp(min=1)).tolist()
    acc1, acc5 = acc1 * 100, acc5 * 100
    logger.info(f' * {name}: Acc@1 {acc1:.3f} Acc@{topk[1]} {acc5:.3f} loss {loss:.4f} '
                f'({int(totals[3].item())} images)')
    return acc1, acc5, loss


@torch.no_grad()
def throughput(config, ctx, model):
    """Inference images/s at the configured batch size, after ``infer_init`` (precomputed decay maps); compiled
    with ``--compile``, through the streaming engine with ``--cpu-streaming`` on CPU."""
    model = copy.deepcopy(model).eval()
    model.infer_init()
    if config.COMPILE:
        model = torch.compile(model)
    with batches(ctx['loader_val']) as stream:
        images, _ = next(stream)
    images = images.to(ctx['device'])
    warmup, timed = (50, 30) if ctx['device'].type == 'cuda' else (3, 10)
    for _ in range(warmup):
        model(images)
    if ctx['device'].type == 'cuda':
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(timed):
        model(images)
    if ctx['device'].type == 'cuda':
        torch.cuda.synchronize()
    rate = timed * images.size(0) / (time.time() - start)
    engine = ' (CPU streaming engine)' if config.CPU_STREAMING and ctx['device'].type == 'cpu' else ''
    ctx['logger'].info(f'batch_size {images.size(0)} throughput {rate:.1f} images/s{engine}')
    return rate


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)


def checkpoint_state(config, ctx, epoch: int, step: Optional[int], max_accuracy: float,
                     max_accuracy_ema: float) -> dict:
    """Everything needed to continue, as plain types (the config as YAML text). ``step``: the batches of ``epoch``
    done when a run stopped mid-epoch, None at the end of the epoch."""
    return {
        'model': ctx['model_without_ddp'].state_dict(),
        'model_ema': ctx['ema'].module.state_dict() if ctx['ema'] is not None else None,
        'optimizer': ctx['optimizer'].state_dict(),
        'lr_scheduler': ctx['scheduler'].state_dict(),
        'scaler': ctx['scaler'].state_dict(),
        'epoch': epoch,
        'step': step,
        'max_accuracy': max_accuracy,
        'max_accuracy_ema': max_accuracy_ema,
        'config': config.dump(),
    }


def choose_start(config, eval_only: bool, logger) -> Optional[str]:
    """Rank 0's choice of the checkpoint to start from: an explicit --resume wins over auto-resume."""
    found = auto_resume_file(config.OUTPUT) if config.TRAIN.AUTO_RESUME and not eval_only else None
    if config.MODEL.RESUME:
        if found:
            logger.info(f'--resume {config.MODEL.RESUME} given: starting from it, not from {found} '
                        '(auto-resume skipped)')
        return config.MODEL.RESUME
    if found:
        logger.info(f'auto-resuming from {found}')
    return found


def restore(ctx, checkpoint: dict, source: str, eval_only: bool) -> Tuple[int, int, float, float]:
    """Load a checkpoint into the model, its EMA and (for training) optimizer, schedule and scaler; returns
    (epoch, batch) to continue at and the best accuracies so far."""
    model, ema = ctx['model_without_ddp'], ctx['ema']
    load_weights(model, checkpoint['model'], source)
    if ema is not None:
        if checkpoint.get('model_ema') is not None:
            load_weights(ema.module, checkpoint['model_ema'], f'{source} (model_ema)')
        else:
            ema.set(model)
    if eval_only or 'optimizer' not in checkpoint or 'lr_scheduler' not in checkpoint:
        return 0, 0, 0.0, 0.0
    ctx['optimizer'].load_state_dict(checkpoint['optimizer'])
    ctx['scheduler'].load_state_dict(checkpoint['lr_scheduler'])
    if checkpoint.get('scaler'):
        ctx['scaler'].load_state_dict(checkpoint['scaler'])
    epoch, step = int(checkpoint['epoch']), checkpoint.get('step')
    start = (epoch, int(step)) if step is not None else (epoch + 1, 0)
    return start + (float(checkpoint.get('max_accuracy', 0.0)), float(checkpoint.get('max_accuracy_ema', 0.0)))


def stop_agreed(signals: StopSignals, device: torch.device) -> int:
    """The stop signal any rank received (0 for none), the same on every rank."""
    received = torch.tensor([signals.received], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
    return int(received.item())


def run(args):
    config = get_config(args)
    rank, world_size, device = init_distributed(config.LOCAL_RANK)
    config = scale_learning_rates(config, world_size)
    logger = create_logger(config.OUTPUT, rank, config.MODEL.NAME)
    logger.info(f'total batch {total_batch(config, world_size)} = {config.DATA.BATCH_SIZE} per process x {world_size} '
                f'processes x {config.TRAIN.ACCUMULATION_STEPS} accumulation steps; effective (per-512 rule) '
                f'BASE_LR {config.TRAIN.BASE_LR:.6g} WARMUP_LR {config.TRAIN.WARMUP_LR:.6g} '
                f'MIN_LR {config.TRAIN.MIN_LR:.6g}')
    if rank == 0:
        with open(os.path.join(config.OUTPUT, 'config.yaml'), 'w') as f:
            f.write(config.dump())
        logger.info(f'Full config saved to {config.OUTPUT}/config.yaml\n{config.dump()}')
    logger.info(f'rank {rank} of {world_size} on {device} (pid {os.getpid()})')
    eval_only = config.EVAL_MODE or config.THROUGHPUT_MODE
    _, dataset_val, loader_train, loader_val, mixup_fn = build_loader(config, eval_only=eval_only)
    batches_per_epoch = None if eval_only else loader_train.sampler.batches_per_epoch

    seed_everything(config.SEED)  # the same initial weights, and so the same EMA start, on every rank
    model = build_model(config).to(device)
    logger.info(f'number of params: {param_count(model) / 1e6:.3f}M')
    logger.info(f'number of GFLOPs: {flop_count(model, (1, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)) / 1e9:.4f}'
                f' at {config.DATA.IMG_SIZE}x{config.DATA.IMG_SIZE}')
    if config.CPU_STREAMING:
        enable_cpu_streaming(model)  # CPU inference only; training steps and other devices run the reference
    amp = config.AMP_ENABLE and device.type == 'cuda'
    amp_dtype = getattr(torch, config.AMP_DTYPE)
    ema = ModelEmaV3(model, decay=config.MODEL_EMA_DECAY) if config.MODEL_EMA else None
    optimizer = create_optimizer_v2(model, config.TRAIN.OPTIMIZER.NAME, lr=config.TRAIN.BASE_LR,
                                    weight_decay=config.TRAIN.WEIGHT_DECAY, eps=config.TRAIN.OPTIMIZER.EPS,
                                    betas=tuple(config.TRAIN.OPTIMIZER.BETAS))
    scheduler = None if eval_only else build_scheduler(config, optimizer, batches_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    ctx = dict(model_without_ddp=model, ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               loader_train=loader_train, loader_val=loader_val, mixup_fn=mixup_fn,
               criterion=build_criterion(config, mixup_fn), logger=logger, device=device, amp=amp,
               amp_dtype=amp_dtype, rank=rank, world_size=world_size, batches_per_epoch=batches_per_epoch)

    # What to start from: rank 0 decides and sends the file; every rank loads it before DDP wraps the model.
    start_epoch, start_step, max_accuracy, max_accuracy_ema = config.TRAIN.START_EPOCH, 0, 0.0, 0.0
    source, checkpoint = shared_checkpoint(choose_start(config, eval_only, logger) if rank == 0 else None, device)
    if checkpoint is not None:
        start = restore(ctx, checkpoint, source, eval_only)
        if not eval_only and 'optimizer' in checkpoint:
            start_epoch, start_step, max_accuracy, max_accuracy_ema = start
        logger.info(f'loaded {source} (epoch {checkpoint.get("epoch", "?")}, step {checkpoint.get("step")})')
    elif config.MODEL.PRETRAINED:
        _, pretrained = shared_checkpoint(config.MODEL.PRETRAINED if rank == 0 else None, device)
        load_weights(model, pretrained['model'], config.MODEL.PRETRAINED)
        if ema is not None:
            ema.set(model)
        logger.info(f'initialised the weights from {config.MODEL.PRETRAINED}')

    ddp_model = wrap_ddp(model, device) if world_size > 1 else model
    eval_model, ema_eval_model = model, ema.module if ema is not None else None
    if config.COMPILE:
        ddp_model, eval_model = torch.compile(ddp_model), torch.compile(model)
        ema_eval_model = torch.compile(ema.module) if ema is not None else None
        logger.info('torch.compile: training and evaluation run compiled (the first steps compile)')
    writer = SummaryWriter(config.OUTPUT) if rank == 0 and not eval_only else None
    ctx.update(model=ddp_model, writer=writer)

    if config.THROUGHPUT_MODE:
        throughput(config, ctx, model)
        return
    if config.EVAL_MODE:
        acc1, _, _ = validate(config, ctx, eval_model)
        logger.info(f'Accuracy of the network on the {len(dataset_val)} test images: {acc1:.2f}%')
        if ema is not None:
            acc1_ema, _, _ = validate(config, ctx, ema_eval_model, name='model_ema')
            logger.info(f'Accuracy of the EMA network on the {len(dataset_val)} test images: {acc1_ema:.2f}%')
        return

    logger.info(f'start training from epoch {start_epoch} to {config.TRAIN.EPOCHS}')
    start = time.time()
    with StopSignals() as signals:
        ctx['signals'] = signals
        for epoch in range(start_epoch, config.TRAIN.EPOCHS):
            first_step = start_step if epoch == start_epoch else 0
            if first_step:
                logger.info(f'resuming epoch {epoch} at step {first_step} of {batches_per_epoch}')
            loader_train.sampler.set_epoch(epoch, first_step)
            stopped = train_one_epoch(config, ctx, epoch, first_step)
            if stopped is not None:
                name = signal.Signals(signals.received).name
                if rank == 0:
                    path = os.path.join(config.OUTPUT, 'ckpt_latest.pth')
                    save_checkpoint(path, checkpoint_state(config, ctx, epoch, stopped, max_accuracy,
                                                           max_accuracy_ema))
                    logger.info(f'stopped by {name} at epoch {epoch} step {stopped} of {batches_per_epoch}; saved '
                                f'{path}: the same command resumes there')
                if dist.is_initialized():
                    dist.barrier()
                raise Preempted(signals.received)
            acc1, acc5, loss = validate(config, ctx, eval_model)
            improved = acc1 > max_accuracy
            max_accuracy = max(max_accuracy, acc1)
            logger.info(f'Epoch {epoch}: accuracy {acc1:.2f}% (max {max_accuracy:.2f}%)')
            if writer is not None:
                writer.add_scalar('val/acc1', acc1, epoch)
                writer.add_scalar('val/acc5', acc5, epoch)
                writer.add_scalar('val/loss', loss, epoch)
            if ema is not None:
                acc1_ema, _, _ = validate(config, ctx, ema_eval_model, name='model_ema')
                max_accuracy_ema = max(max_accuracy_ema, acc1_ema)
                logger.info(f'Epoch {epoch}: EMA accuracy {acc1_ema:.2f}% (max {max_accuracy_ema:.2f}%)')
                if writer is not None:
                    writer.add_scalar('val/acc1_ema', acc1_ema, epoch)
            if rank == 0:
                state = checkpoint_state(config, ctx, epoch, None, max_accuracy, max_accuracy_ema)
                if improved:
                    save_checkpoint(os.path.join(config.OUTPUT, 'ckpt_best.pth'), state)
                if (epoch + 1) % config.SAVE_FREQ == 0 or epoch == config.TRAIN.EPOCHS - 1:
                    save_checkpoint(os.path.join(config.OUTPUT, f'ckpt_epoch_{epoch}.pth'), state)
                save_checkpoint(os.path.join(config.OUTPUT, 'ckpt_latest.pth'), state)
                logger.info(f'saved {config.OUTPUT}/ckpt_latest.pth')
            stop = stop_agreed(signals, device)
            if stop and epoch < config.TRAIN.EPOCHS - 1:
                logger.info(f'stopped by {signal.Signals(stop).name} after epoch {epoch}: the same command resumes '
                            f'at epoch {epoch + 1}')
                raise Preempted(stop)
    logger.info(f'Training time {format_eta(time.time() - start)}; max accuracy {max_accuracy:.2f}%'
                + (f', EMA {max_accuracy_ema:.2f}%' if ema is not None else ''))
    if rank == 0:
        with open(os.path.join(config.OUTPUT, 'result.json'), 'w') as f:
            json.dump({'max_accuracy': max_accuracy, 'max_accuracy_ema': max_accuracy_ema}, f)
    if writer is not None:
        writer.close()


def one_line(error: Exception) -> str:
    """The error's own message, also when a DataLoader worker re-raised it with a traceback attached."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return last.split(': ', 1)[1] if last.startswith(('classification.', 'DataError')) and ': ' in last else last


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except Preempted as e:  # the log says where the run stopped; the exit status says which signal stopped it
        sys.exit(128 + e.signum)
    except (ConfigError, DataError, CheckpointError, TrainingError, UnsafeCheckpointError,
            FileNotFoundError) as e:
        exit_with_error(one_line(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
