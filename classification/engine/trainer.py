"""The training loop: one run's data, model, EMA, optimizer, schedule and scaler; training, evaluation and
throughput; saving, resuming and stopping at a step boundary. ``classification/main.py`` is its command line."""
import contextlib
import copy
import itertools
import json
import os
import signal
import time
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch.utils.tensorboard import SummaryWriter

from classification.core.fileio import save_checkpoint
from classification.data import (BatchNormalize, batches, build_loader, derived_seed, input_channels, seed_everything,
                                 train_epochs)
from classification.models import enable_cpu_streaming, find_state_dict
from classification.models.errors import VHeatError
from classification.models.flops import flop_count, param_count

from .build import build_model
from .checkpoint import auto_resume_file, load_optimizer_state, load_weights, shared_checkpoint
from .optim import build_criterion, build_optimizer, build_scheduler
from .preemption import Preempted, StopSignals, stop_agreed
from .stats import StepStats, format_eta


class TrainingError(VHeatError, RuntimeError):
    """Training cannot go on (e.g. the loss is not finite)."""


def grad_sync(model: torch.nn.Module, sync: bool):
    """DDP all-reduces the gradients in backward; on the micro-steps of an accumulation window that do not step
    the optimizer it need not (``no_sync``): the window's summed gradients are all-reduced once, at its end."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    return torch.nn.parallel.DistributedDataParallel(model,
                                                     device_ids=[device.index] if device.type == 'cuda' else None)


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
            new = load_weights(self.ema.module, find_state_dict(checkpoint, 'model_ema', source),
                               f'{source} (model_ema)', new_classifier_ok)
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
        of the data (for tools/misc/predict.py)."""
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
