"""The official recipe's criterion, optimizer and learning-rate schedules, built from the config with timm's
implementations."""
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler, StepLRScheduler

from classification.config import optimizer_name


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
