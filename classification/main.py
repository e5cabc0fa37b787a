"""Train and evaluate vHeat (or a timm model, with the same recipe) on ImageNet or a standard data set; after
Swin-Transformer's main.py, with the official vHeat trainer's command line.

    python classification/main.py --cfg classification/configs/vHeat/vHeat_tiny_224.yaml --data-path DATA
    python -m torch.distributed.launch --nproc_per_node=8 classification/main.py ...   # or torchrun
    srun --ntasks-per-node=8 --gres=gpu:8 python classification/main.py ...           # one task per GPU (SLURM)
    python classification/main.py --cfg ... --data-path DATA --eval --resume vHeat_tiny.pth [--model_ema False]
"""
import argparse
import contextlib
import copy
import datetime
import itertools
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
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.tensorboard import SummaryWriter

from classification.cli import exit_with_error
from classification.config import ConfigError, get_config, optimizer_name, scale_learning_rates, total_batch
from classification.data import (BatchNormalize, DataError, batches, build_loader, derived_seed, input_channels,
                                 seed_everything, train_epochs)
from classification.data.build import check_data_path
from classification.models import UnsafeCheckpointError, build_model, enable_cpu_streaming
from classification.models.flops import flop_count, param_count
from classification.models.serialization import CheckpointDownloadError
from classification.slurm import LaunchError, describe_launch
from classification.utils import (CheckpointError, auto_resume_file, create_logger, init_distributed,
                                  load_optimizer_state, load_weights, save_checkpoint, shared_checkpoint)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite)."""


class Preempted(Exception):
    """A stop signal arrived; the state was saved at a step boundary and the run ends."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Within the context, SIGTERM and SIGUSR1 (what clusters such as SLURM send ahead of a kill) only record
    their arrival: the trainer stops at the next step boundary, after saving where it was.

    Once one has stopped the run, later ones are ignored until the process exits with 128 + the first signal: the
    state is saved and the run is ending (srun, for one, sends SIGTERM to the other tasks as soon as one task has
    exited, which would otherwise turn their exit status into 143).
    """

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
            signal.signal(s, signal.SIG_IGN if self.received else handler)


def str2bool(value: str) -> bool:
    if value.lower() in ('true', '1', 'yes', 't', 'y'):
        return True
    if value.lower() in ('false', '0', 'no', 'f', 'n'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {value!r}')


def parse_args(argv=None):
    """Every flag of the official trainer (same names and meanings), and this trainer's own (--compile,
    --cpu-streaming). An unknown flag is an error naming it (the official trainer ignored it)."""
    parser = argparse.ArgumentParser('vHeat training and evaluation', add_help=True)
    parser.add_argument('--cfg', type=str, metavar='FILE', help='path to a config file')
    parser.add_argument('--opts', nargs='+', default=None, help='override config options: KEY VALUE ...')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--data-path', type=str, help='folder with train/ and val/ (or the zip layout, or the '
                        'files of DATA.DATASET)')
    parser.add_argument('--zip', action='store_true', help='read train.zip/val.zip with their map files')
    parser.add_argument('--cache-mode', choices=['no', 'full', 'part'],
                        help='zip mode: no cache, all images in memory, or only this process\'s shard (default '
                        'part, as officially)')
    parser.add_argument('--resume', help='resume from (or, with --eval, evaluate) this checkpoint file or https URL')
    parser.add_argument('--pretrained', help='initialise the weights from this checkpoint file or https URL '
                        '(another number of classes: the classifier starts new)')
    parser.add_argument('--accumulation-steps', type=int, help='gradient accumulation steps')
    parser.add_argument('--use-checkpoint', action='store_true', help='gradient checkpointing to save memory')
    parser.add_argument('--disable_amp', action='store_true', help='no mixed precision')
    parser.add_argument('--amp-opt-level', choices=['O0', 'O1', 'O2'],
                        help='deprecated (apex), as officially: O0 turns mixed precision off, O1/O2 change nothing')
    parser.add_argument('--output', type=str, help='root of the outputs: <output>/<MODEL.NAME>/<tag>/')
    parser.add_argument('--tag', help='tag of the experiment')
    parser.add_argument('--eval', action='store_true', help='evaluate on val only')
    parser.add_argument('--throughput', action='store_true', help='measure inference throughput only')
    parser.add_argument('--fused_layernorm', action='store_true',
                        help='official flag of Swin\'s fused LayerNorm; vHeat never reads it (no effect)')
    parser.add_argument('--optim', help='optimizer instead of the config\'s: adamw, sgd, fused_adam, fused_lamb')
    parser.add_argument('--model_ema', type=str2bool, help='keep (and evaluate) an EMA of the weights')
    parser.add_argument('--model_ema_decay', type=float, help='EMA decay')
    parser.add_argument('--model_ema_force_cpu', type=str2bool, help='keep the EMA weights on the CPU')
    parser.add_argument('--compile', action='store_true', help='torch.compile the network (training and evaluation)')
    parser.add_argument('--cpu-streaming', action='store_true',
                        help='CPU inference through the streaming engine (enable_cpu_streaming)')
    parser.add_argument('--local-rank', '--local_rank', dest='local_rank', type=int, default=0,
                        help='set by torch.distributed.launch (torchrun sets LOCAL_RANK instead)')
    return parser.parse_args(argv)


def build_criterion(config, mixup_fn):
    if mixup_fn is not None:  # mixup makes soft targets, label smoothing included
        return SoftTargetCrossEntropy()
    if config.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    return torch.nn.CrossEntropyLoss()


class OfficialMultiStepLRScheduler(MultiStepLRScheduler):
    """The official multistep schedule: the rate is multiplied by GAMMA from each milestone step on (timm's
    MultiStepLRScheduler applies a milestone one step earlier)."""

    def get_curr_decay_steps(self, t: int) -> int:
        return sum(1 for milestone in self.decay_t if milestone <= t)


def build_scheduler(config, optimizer, batches_per_epoch: int):
    """The official schedules, stepped per optimizer update (a step counts ``ACCUMULATION_STEPS`` batches): linear
    warm-up from WARMUP_LR over WARMUP_EPOCHS, then cosine to MIN_LR, linear to 1% of BASE_LR, a step decay
    every DECAY_EPOCHS, or a decay at each of the MULTISTEPS epochs."""
    per_epoch = max(1, batches_per_epoch // config.TRAIN.ACCUMULATION_STEPS)
    s = config.TRAIN.LR_SCHEDULER
    steps, warmup = config.TRAIN.EPOCHS * per_epoch, config.TRAIN.WARMUP_EPOCHS * per_epoch
    common = dict(warmup_lr_init=config.TRAIN.WARMUP_LR, warmup_t=warmup, t_in_epochs=False)
    if s.NAME == 'linear':  # officially lr_min_rate 0.01 of the base rate; one base rate for every group here
        return PolyLRScheduler(optimizer, t_initial=max(1, steps - warmup), power=1.0,
                               lr_min=0.01 * config.TRAIN.BASE_LR, warmup_prefix=True, **common)
    # step and multistep count their decays from step 0, warm-up included (timm's defaults now differ)
    if s.NAME == 'step':
        return StepLRScheduler(optimizer, decay_t=max(1, int(s.DECAY_EPOCHS * per_epoch)), decay_rate=s.DECAY_RATE,
                               warmup_prefix=False, **common)
    if s.NAME == 'multistep':
        return OfficialMultiStepLRScheduler(optimizer, decay_t=[e * per_epoch for e in s.MULTISTEPS],
                                            decay_rate=s.GAMMA, warmup_prefix=False, **common)
    return CosineLRScheduler(optimizer, t_initial=max(1, steps - warmup if s.WARMUP_PREFIX else steps),
                             lr_min=config.TRAIN.MIN_LR, cycle_limit=1, warmup_prefix=s.WARMUP_PREFIX, **common)


def build_optimizer(config, model):
    """AdamW (or the configured optimizer) through timm, without weight decay on 1-D parameters and biases."""
    name = optimizer_name(config.TRAIN.OPTIMIZER.NAME)
    kwargs = dict(lr=config.TRAIN.BASE_LR, weight_decay=config.TRAIN.WEIGHT_DECAY)
    if name in ('sgd', 'nesterov', 'momentum'):
        kwargs['momentum'] = config.TRAIN.OPTIMIZER.MOMENTUM
    else:
        kwargs.update(eps=config.TRAIN.OPTIMIZER.EPS, betas=tuple(config.TRAIN.OPTIMIZER.BETAS))
    return create_optimizer_v2(model, name, **kwargs)


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


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)


def stop_agreed(signals: StopSignals, device: torch.device) -> int:
    """The stop signal any rank received (0 for none), the same on every rank."""
    received = torch.tensor([signals.received], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
    return int(received.item())


class Trainer:
    """One run: its data, model, EMA, optimizer, schedule and scaler, where it starts and its best accuracies.

    ``model`` is the network itself; ``train_model`` what the training steps call (DDP and/or compiled), and
    ``eval_model`` / ``ema_eval_model`` what evaluation calls (compiled with --compile, never DDP: the shards of
    the validation split may differ in length).
    """

    def __init__(self, config, rank: int, world_size: int, device: torch.device, logger):
        self.config, self.rank, self.world_size, self.device, self.logger = config, rank, world_size, device, logger
        self.eval_only = config.EVAL_MODE or config.THROUGHPUT_MODE
        self.dataset_train, self.dataset_val, self.loader_train, self.loader_val, self.mixup_fn = build_loader(
            config, eval_only=self.eval_only, logger=logger)
        self.epochs = None if self.eval_only else train_epochs(self.loader_train)  # the sampler, or the shard stream
        self.batches_per_epoch = None if self.eval_only else self.epochs.batches_per_epoch
        seed_everything(config.SEED)  # the same initial weights, and so the same EMA start, on every rank
        self.model = build_model(config).to(device)
        size = config.DATA.IMG_SIZE
        logger.info(f'{config.MODEL.TYPE} {config.MODEL.TIMM.NAME or config.MODEL.NAME}: number of params: '
                    f'{param_count(self.model) / 1e6:.3f}M')
        logger.info(f'number of GFLOPs: {flop_count(self.model, (1, input_channels(config), size, size)) / 1e9:.4f}'
                    f' at {size}x{size}')
        if config.CPU_STREAMING:
            enable_cpu_streaming(self.model)  # CPU inference only; training steps and GPUs run the reference
        self.amp = config.AMP_ENABLE and device.type == 'cuda'
        self.amp_dtype = getattr(torch, config.AMP_DTYPE)
        self.ema = ModelEmaV3(self.model, decay=config.MODEL_EMA_DECAY,
                              device='cpu' if config.MODEL_EMA_FORCE_CPU else None) if config.MODEL_EMA else None
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = None if self.eval_only else build_scheduler(config, self.optimizer, self.batches_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.criterion = build_criterion(config, self.mixup_fn)
        self.normalize = BatchNormalize(config)  # the validation loader's uint8 batches, on their device
        self.start_epoch, self.start_step = config.TRAIN.START_EPOCH, 0
        self.max_accuracy = self.max_accuracy_ema = 0.0
        self.writer = SummaryWriter(config.OUTPUT) if rank == 0 and not self.eval_only else None
        self.signals = StopSignals()
        self.train_model = self.eval_model = self.ema_eval_model = None

    # --- where the run starts -------------------------------------------------------------------------------

    def choose_start(self) -> Optional[str]:
        """Rank 0's choice of the checkpoint to start from: an explicit --resume wins over auto-resume."""
        config = self.config
        found = auto_resume_file(config.OUTPUT) if config.TRAIN.AUTO_RESUME and not self.eval_only else None
        if config.MODEL.RESUME:
            if found:
                self.logger.info(f'--resume {config.MODEL.RESUME} given: starting from it, not from {found} '
                                 '(auto-resume skipped)')
            return config.MODEL.RESUME
        if found:
            self.logger.info(f'auto-resuming from {found}')
        return found

    def start(self) -> None:
        """Load what the run starts from, the same on every rank (rank 0 reads the file and sends it), before DDP
        wraps the model: a checkpoint to resume or evaluate, else --pretrained weights."""
        source, checkpoint = shared_checkpoint(self.choose_start() if self.rank == 0 else None, self.device)
        if checkpoint is not None:
            self.restore(checkpoint, source)
        elif self.config.MODEL.PRETRAINED:
            source, checkpoint = shared_checkpoint(self.config.MODEL.PRETRAINED if self.rank == 0 else None,
                                                   self.device)
            self.load_pretrained(checkpoint, source)

    def restore(self, checkpoint: dict, source: str) -> None:
        """Weights and EMA; for training also the optimizer (official checkpoints: mapped by parameter), the
        schedule, the scaler, the epoch and step to continue at and the best accuracies."""
        load_weights(self.model, checkpoint['model'], source)
        self._restore_ema(checkpoint, source)
        self.logger.info(f'loaded {source} (epoch {checkpoint.get("epoch", "?")}, step {checkpoint.get("step")})')
        if self.eval_only or 'optimizer' not in checkpoint or 'lr_scheduler' not in checkpoint:
            return
        load_optimizer_state(self.optimizer, self.model, checkpoint, source)
        self.scheduler.load_state_dict(checkpoint['lr_scheduler'])
        if checkpoint.get('scaler'):
            self.scaler.load_state_dict(checkpoint['scaler'])
        epoch, step = int(checkpoint['epoch']), checkpoint.get('step')
        self.start_epoch, self.start_step = (epoch, int(step)) if step is not None else (epoch + 1, 0)
        self.max_accuracy = float(checkpoint.get('max_accuracy', 0.0))
        # the official trainer writes its EMA's best as 'max_accuray_ema'
        self.max_accuracy_ema = float(checkpoint.get('max_accuracy_ema', checkpoint.get('max_accuray_ema', 0.0)))

    def _restore_ema(self, checkpoint: dict, source: str, new_classifier_ok: bool = False) -> None:
        if self.ema is None:
            return
        if checkpoint.get('model_ema') is not None:
            new = load_weights(self.ema.module, checkpoint['model_ema'], f'{source} (model_ema)', new_classifier_ok)
            for key in new:  # a new classifier: the EMA's starts as the model's
                self.ema.module.state_dict()[key].copy_(self.model.state_dict()[key])
        else:
            self.ema.set(self.model)

    def load_pretrained(self, checkpoint: dict, source: str) -> None:
        """Weights for a new run (the official --pretrained: ``model``, and ``model_ema`` into the EMA); a
        classifier of another number of classes starts as initialised."""
        new = load_weights(self.model, checkpoint['model'], source, new_classifier_ok=True)
        self._restore_ema(checkpoint, source, new_classifier_ok=True)
        if new:
            self.logger.info(f'{source}: its classifier has another number of classes; {", ".join(new)} '
                             f're-initialised for {self.config.MODEL.NUM_CLASSES} classes, everything else loaded')
        self.logger.info(f'initialised the weights from {source}')

    def prepare(self) -> None:
        """DDP around the network (after every rank loaded the same start), and torch.compile with --compile."""
        self.train_model = wrap_ddp(self.model, self.device) if self.world_size > 1 else self.model
        self.eval_model = self.model
        self.ema_eval_model = self.ema.module if self.ema is not None else None
        if self.config.COMPILE:
            self.train_model, self.eval_model = torch.compile(self.train_model), torch.compile(self.model)
            self.ema_eval_model = torch.compile(self.ema.module) if self.ema is not None else None
            self.logger.info('torch.compile: training and evaluation run compiled (the first steps compile)')

    # --- training -------------------------------------------------------------------------------------------

    def train_one_epoch(self, epoch: int, start_step: int = 0) -> Optional[int]:
        """One pass over the training split from batch ``start_step``: AMP, accumulation, clipping, per-step LR
        and EMA updates. Returns None at the end of the epoch, or the number of batches done if a stop signal
        came.

        Each step seeds torch, numpy and ``random`` from (SEED, epoch, step, rank) (mixup, cutmix, drop path), as
        the loader seeds each sample, so a run resumed at any step continues exactly. Losses and gradient norms
        stay on the device; every PRINT_FREQ optimizer steps and at the epoch's last batch they are logged and the
        ranks agree on non-finite losses and stop signals (a single process looks at its signals at every
        optimizer step).
        """
        self.train_model.train()
        self.optimizer.zero_grad()
        start = time.time()
        with batches(self.loader_train) as stream:
            stopped = self._train_steps(epoch, start_step, stream)
        if stopped is not None:
            return stopped
        epoch_time = time.time() - start
        images = (self.batches_per_epoch - start_step) * self.config.DATA.BATCH_SIZE * self.world_size
        self.logger.info(f'EPOCH {epoch} training takes {format_eta(epoch_time)} ({images / epoch_time:.1f} '
                         'images/s)')
        if self.writer is not None:
            self.writer.add_scalar('train/throughput', images / epoch_time, epoch)
        return None

    def _train_steps(self, epoch: int, start_step: int, stream) -> Optional[int]:
        """The steps of :meth:`train_one_epoch`; the number of batches done if a stop was agreed, else None."""
        config, optimizer = self.config, self.optimizer
        accum, num_steps = config.TRAIN.ACCUMULATION_STEPS, self.batches_per_epoch
        max_norm = config.TRAIN.CLIP_GRAD if config.TRAIN.CLIP_GRAD > 0 else float('inf')
        single = not dist.is_initialized()
        stats, last_sync = StepStats(self.device), time.time()
        for idx, (samples, targets) in enumerate(itertools.islice(stream, num_steps - start_step), start=start_step):
            seed_everything(derived_seed(config.SEED, epoch, idx, self.rank))
            samples = samples.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.mixup_fn is not None:
                samples, targets = self.mixup_fn(samples, targets)
            window_end = (idx + 1) % accum == 0
            with grad_sync(self.train_model, window_end):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    outputs = self.train_model(samples)
                loss = self.criterion(outputs.float(), targets)
                self.scaler.scale(loss / accum).backward()
            stats.add_loss(loss, idx)
            if window_end:
                self.scaler.unscale_(optimizer)
                stats.add_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad()
                update = (epoch * num_steps + idx) // accum  # the official trainer's step index
                self.scheduler.step_update(update)
                if self.ema is not None:
                    self.ema.update(self.model, step=update)
            updates = (idx + 1) // accum
            log_point = (window_end and (updates == 1 or updates % config.PRINT_FREQ == 0)) or idx == num_steps - 1
            if not (log_point or (single and window_end and self.signals.received)):
                continue
            bad, stop = stats.agree(self.signals.received)
            if bad is not None:
                raise TrainingError(f'loss is not finite at epoch {epoch} step {bad} (global step '
                                    f'{epoch * num_steps + bad}); stopped, the last checkpoint was kept')
            loss_avg, norm_avg = stats.means()
            now = time.time()
            per_batch = (now - last_sync) / max(stats.losses, 1)
            lr = optimizer.param_groups[0]['lr']
            self.logger.info(f'Train: [{epoch}/{config.TRAIN.EPOCHS}][{idx + 1}/{num_steps}]\t'
                             f'eta {format_eta(per_batch * (num_steps - idx - 1))} lr {lr:.6f}\t'
                             f'time/batch {per_batch:.4f}\tloss {loss_avg:.4f}\tgrad_norm {norm_avg:.4f}')
            if self.writer is not None:
                self.writer.add_scalar('train/loss', loss_avg, epoch * num_steps + idx)
                self.writer.add_scalar('train/lr', lr, epoch * num_steps + idx)
            stats.reset()
            last_sync = now
            if stop and window_end and idx < num_steps - 1:
                self.signals.received = stop
                return idx + 1
        return None

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, name: str = 'model') -> Tuple[float, float, float, int]:
        """Top-1/top-5 accuracy (%), loss and the number of images counted on the val split. Each process evaluates
        its own shard (every image on exactly one process, see ``ShardSampler`` and ``ShardStream``) and the sums are
        all-reduced once: the result and the image count do not depend on the number of processes. The images go
        where the model is (the EMA may be kept on the CPU, ``--model_ema_force_cpu``)."""
        model.eval()
        topk = (1, min(5, self.config.MODEL.NUM_CLASSES))
        device = next(model.parameters()).device
        totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
        start, loader = time.time(), self.loader_val
        with batches(loader) as stream:
            for idx, (images, targets) in enumerate(stream):
                images = self.normalize(images.to(device, non_blocking=True))
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp and device.type == 'cuda'):
                    output = model(images).float()
                correct = output.topk(topk[1], dim=1).indices.eq(targets[:, None])
                totals += torch.stack([
                    torch.nn.functional.cross_entropy(output, targets, reduction='sum').double(),
                    correct[:, :1].sum().double(), correct.sum().double(),
                    torch.tensor(float(targets.numel()), dtype=torch.float64, device=device)])
                if idx % self.config.PRINT_FREQ == 0 and idx > 0:
                    per_batch = (time.time() - start) / (idx + 1)
                    self.logger.info(f'Test ({name}): [{idx}/{len(loader)}]\teta '
                                     f'{format_eta(per_batch * (len(loader) - idx - 1))}')
        if dist.is_initialized():  # the process group's device (gloo takes CPU tensors, nccl CUDA ones)
            totals = totals.to(self.device)
            dist.all_reduce(totals)
        loss, acc1, acc5 = (totals[:3] / totals[3].clamp(min=1)).tolist()
        acc1, acc5 = acc1 * 100, acc5 * 100
        self.logger.info(f' * {name}: Acc@1 {acc1:.3f} Acc@{topk[1]} {acc5:.3f} loss {loss:.4f} '
                         f'({int(totals[3].item())} images)')
        return acc1, acc5, loss, int(totals[3].item())

    def evaluate(self) -> None:
        """--eval: the model and, with --model_ema True, its EMA."""
        acc1, _, _, images = self.validate(self.eval_model)
        self.logger.info(f'Accuracy of the network on the {images} test images: {acc1:.2f}%')
        if self.ema is not None:
            acc1_ema, _, _, images = self.validate(self.ema_eval_model, name='model_ema')
            self.logger.info(f'Accuracy of the EMA network on the {images} test images: {acc1_ema:.2f}%')

    @torch.no_grad()
    def throughput(self) -> float:
        """Inference images/s at the configured batch size; vHeat after ``infer_init`` (precomputed decay maps),
        compiled with ``--compile``, through the streaming engine with ``--cpu-streaming`` on CPU."""
        model = copy.deepcopy(self.model).eval()
        if hasattr(model, 'infer_init'):
            model.infer_init()
        if self.config.COMPILE:
            model = torch.compile(model)
        with batches(self.loader_val) as stream:
            images, _ = next(stream)
        images = self.normalize(images.to(self.device))
        cuda = self.device.type == 'cuda'
        warmup, timed = (50, 30) if cuda else (3, 10)
        for _ in range(warmup):
            model(images)
        if cuda:
            torch.cuda.synchronize()
        start = time.time()
        for _ in range(timed):
            model(images)
        if cuda:
            torch.cuda.synchronize()
        rate = timed * images.size(0) / (time.time() - start)
        engine = ' (CPU streaming engine)' if self.config.CPU_STREAMING and not cuda else ''
        self.logger.info(f'batch_size {images.size(0)} throughput {rate:.1f} images/s{engine}')
        return rate

    def state(self, epoch: int, step: Optional[int]) -> dict:
        """Everything needed to continue, as plain types (the config as YAML text). ``step``: the batches of
        ``epoch`` done when a run stopped mid-epoch, None at the end of the epoch. ``classes``: the class names
        of the data (for tools/predict.py)."""
        return {
            'model': self.model.state_dict(),
            'model_ema': self.ema.module.state_dict() if self.ema is not None else None,
            'optimizer': self.optimizer.state_dict(),
            'lr_scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(),
            'epoch': epoch,
            'step': step,
            'max_accuracy': self.max_accuracy,
            'max_accuracy_ema': self.max_accuracy_ema,
            'classes': list(getattr(self.dataset_val, 'classes', None) or []),
            'config': self.config.dump(),
        }

    def save_epoch(self, epoch: int, improved: bool) -> None:
        """Rank 0: ``ckpt_best.pth`` if the accuracy improved, ``ckpt_epoch_<N>.pth`` every SAVE_FREQ epochs and
        at the end, ``ckpt_latest.pth`` always."""
        if self.rank != 0:
            return
        state, output = self.state(epoch, None), self.config.OUTPUT
        if improved:
            save_checkpoint(os.path.join(output, 'ckpt_best.pth'), state)
        if (epoch + 1) % self.config.SAVE_FREQ == 0 or epoch == self.config.TRAIN.EPOCHS - 1:
            save_checkpoint(os.path.join(output, f'ckpt_epoch_{epoch}.pth'), state)
        save_checkpoint(os.path.join(output, 'ckpt_latest.pth'), state)
        self.logger.info(f'saved {output}/ckpt_latest.pth')

    def stop_mid_epoch(self, epoch: int, step: int) -> None:
        """A stop signal was agreed at ``step``: rank 0 saves there, then the run ends."""
        name = signal.Signals(self.signals.received).name
        if self.rank == 0:
            path = os.path.join(self.config.OUTPUT, 'ckpt_latest.pth')
            save_checkpoint(path, self.state(epoch, step))
            self.logger.info(f'stopped by {name} at epoch {epoch} step {step} of {self.batches_per_epoch}; saved '
                             f'{path}: the same command resumes there')
        if dist.is_initialized():
            dist.barrier()
        raise Preempted(self.signals.received)

    def end_of_epoch(self, epoch: int) -> None:
        """Validate the model and its EMA, log, and save."""
        acc1, acc5, loss, _ = self.validate(self.eval_model)
        improved = acc1 > self.max_accuracy
        self.max_accuracy = max(self.max_accuracy, acc1)
        self.logger.info(f'Epoch {epoch}: accuracy {acc1:.2f}% (max {self.max_accuracy:.2f}%)')
        if self.writer is not None:
            for key, value in (('acc1', acc1), ('acc5', acc5), ('loss', loss)):
                self.writer.add_scalar(f'val/{key}', value, epoch)
        if self.ema is not None:
            acc1_ema, _, _, _ = self.validate(self.ema_eval_model, name='model_ema')
            self.max_accuracy_ema = max(self.max_accuracy_ema, acc1_ema)
            self.logger.info(f'Epoch {epoch}: EMA accuracy {acc1_ema:.2f}% (max {self.max_accuracy_ema:.2f}%)')
            if self.writer is not None:
                self.writer.add_scalar('val/acc1_ema', acc1_ema, epoch)
        self.save_epoch(epoch, improved)

    def fit(self) -> None:
        """Train from where :meth:`start` left the run to TRAIN.EPOCHS; SIGTERM/SIGUSR1 stop it at a step boundary
        with a checkpoint that the same command resumes from."""
        config, logger = self.config, self.logger
        logger.info(f'start training from epoch {self.start_epoch} to {config.TRAIN.EPOCHS}')
        start = time.time()
        with self.signals:
            for epoch in range(self.start_epoch, config.TRAIN.EPOCHS):
                first_step = self.start_step if epoch == self.start_epoch else 0
                if first_step and not self.epochs.resumes_mid_epoch:
                    logger.info(f'stopped at step {first_step} of epoch {epoch}, but streamed shards cannot be '
                                f'entered mid-epoch: epoch {epoch} restarts at its first step (the {first_step} steps '
                                'done before the stop are trained again)')
                    first_step = 0
                elif first_step:
                    logger.info(f'resuming epoch {epoch} at step {first_step} of {self.batches_per_epoch}')
                self.epochs.set_epoch(epoch, first_step)
                stopped = self.train_one_epoch(epoch, first_step)
                if stopped is not None:
                    self.stop_mid_epoch(epoch, stopped)
                self.end_of_epoch(epoch)
                stop = stop_agreed(self.signals, self.device)
                if stop and epoch < config.TRAIN.EPOCHS - 1:
                    logger.info(f'stopped by {signal.Signals(stop).name} after epoch {epoch}: the same command '
                                f'resumes at epoch {epoch + 1}')
                    raise Preempted(stop)
        logger.info(f'Training time {format_eta(time.time() - start)}; max accuracy {self.max_accuracy:.2f}%'
                    + (f', EMA {self.max_accuracy_ema:.2f}%' if self.ema is not None else ''))
        if self.rank == 0:
            with open(os.path.join(config.OUTPUT, 'result.json'), 'w') as f:
                json.dump({'max_accuracy': self.max_accuracy, 'max_accuracy_ema': self.max_accuracy_ema}, f)
        if self.writer is not None:
            self.writer.close()


def log_setup(config, logger, rank: int, world_size: int, device: torch.device) -> None:
    """The total batch and effective rates, the full config (saved by rank 0), and what official flags do here."""
    logger.info(f'total batch {total_batch(config, world_size)} = {config.DATA.BATCH_SIZE} per process x {world_size} '
                f'processes x {config.TRAIN.ACCUMULATION_STEPS} accumulation steps; effective (per-512 rule) '
                f'BASE_LR {config.TRAIN.BASE_LR:.6g} WARMUP_LR {config.TRAIN.WARMUP_LR:.6g} '
                f'MIN_LR {config.TRAIN.MIN_LR:.6g}')
    if rank == 0:
        with open(os.path.join(config.OUTPUT, 'config.yaml'), 'w') as f:
            f.write(config.dump())
        logger.info(f'Full config saved to {config.OUTPUT}/config.yaml\n{config.dump()}')
    if config.AMP_OPT_LEVEL:
        logger.warning(f'--amp-opt-level {config.AMP_OPT_LEVEL}: apex amp is deprecated (as officially); '
                       + ('mixed precision is off' if config.AMP_OPT_LEVEL == 'O0' else 'nothing changes'))
    if config.FUSED_LAYERNORM or config.FUSED_WINDOW_PROCESS:
        logger.info('FUSED_LAYERNORM / FUSED_WINDOW_PROCESS (--fused_layernorm): no effect, vHeat never reads them '
                    '(nor did the official vHeat)')
    if config.TRAIN.LAYER_DECAY != 1.0:
        logger.info('TRAIN.LAYER_DECAY: no effect (read only by SimMIM fine-tuning, as officially)')
    launch = describe_launch()
    logger.info(f'rank {rank} of {world_size} on {device} (pid {os.getpid()}{", " + launch if launch else ""})')


def run(args) -> None:
    config = get_config(args)
    check_data_path(config, eval_only=config.EVAL_MODE or config.THROUGHPUT_MODE)
    rank, world_size, device = init_distributed(config.LOCAL_RANK)
    config = scale_learning_rates(config, world_size)
    logger = create_logger(config.OUTPUT, rank, config.MODEL.NAME)
    log_setup(config, logger, rank, world_size, device)
    trainer = Trainer(config, rank, world_size, device, logger)
    trainer.start()
    trainer.prepare()
    if config.THROUGHPUT_MODE:
        trainer.throughput()
    elif config.EVAL_MODE:
        trainer.evaluate()
    else:
        trainer.fit()


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
    except (ConfigError, DataError, CheckpointError, TrainingError, UnsafeCheckpointError, CheckpointDownloadError,
            LaunchError, FileNotFoundError) as e:
        exit_with_error(one_line(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
