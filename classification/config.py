"""The trainer's configuration: yacs defaults (Swin-Transformer key names), then the YAML file, then flags."""
import os

import yaml
from yacs.config import CfgNode as CN

from classification.data import DATASETS
from classification.data.zipdata import CACHE_MODES
from classification.models.errors import VHeatError

SCHEDULERS = ('cosine', 'linear', 'step', 'multistep')
OFFICIAL_OPTIMIZERS = {'fused_adam': 'fusedadam', 'fused_lamb': 'fusedlamb'}  # apex's, under timm's names


class ConfigError(VHeatError, ValueError):
    """The configuration file or a command-line override is invalid."""


_C = CN()
_C.BASE = ['']

_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128            # per process
_C.DATA.DATA_PATH = ''              # imagenet: train/ and val/ with a sub-folder per class (or the zip layout)
_C.DATA.DATASET = 'imagenet'        # or hfds (Hugging Face parquet, save_to_disk or hub name), wds (WebDataset
#                                     shards), or a standard set read from its files: fashion_mnist, mnist, cifar10...
_C.DATA.IMG_SIZE = 224
_C.DATA.INTERPOLATION = 'bicubic'
_C.DATA.ZIP_MODE = False            # imagenet from train.zip/train_map.txt and val.zip/val_map.txt (--zip)
_C.DATA.CACHE_MODE = 'part'         # zip mode: hold no, all ('full') or this rank's shard ('part') of the images
_C.DATA.RANK_SHARDS = False         # each rank trains on a fixed shard (what --zip --cache-mode part implies)
_C.DATA.TRAIN_SUBSET = 0            # standard data sets: train on the first N images only (0: all)
_C.DATA.PIN_MEMORY = True
_C.DATA.WDS = CN()                  # DATA.DATASET wds (classification/data/shards.py)
_C.DATA.WDS.TRAIN = ''              # brace pattern of the training shards under DATA_PATH ('': from _info.json)
_C.DATA.WDS.VAL = ''                # the same for the validation shards
_C.DATA.WDS.SHUFFLE_BUFFER = 1024   # samples each loader worker shuffles among (their encoded bytes stay in memory)
_C.DATA.NUM_WORKERS = 8

_C.MODEL = CN()
_C.MODEL.TYPE = 'vHeat'
_C.MODEL.NAME = 'vHeat_tiny_224'
_C.MODEL.PRETRAINED = ''            # weights only, for fine-tuning
_C.MODEL.RESUME = ''                # full training state (or an official checkpoint)
_C.MODEL.NUM_CLASSES = 1000
_C.MODEL.DROP_RATE = 0.0
_C.MODEL.DROP_PATH_RATE = 0.1
_C.MODEL.LABEL_SMOOTHING = 0.1

_C.MODEL.VHEAT = CN()
_C.MODEL.VHEAT.PATCH_SIZE = 4
_C.MODEL.VHEAT.IN_CHANS = 3
_C.MODEL.VHEAT.EMBED_DIM = 96
_C.MODEL.VHEAT.DEPTHS = [2, 2, 6, 2]
_C.MODEL.VHEAT.MLP_RATIO = 4.0
_C.MODEL.VHEAT.POST_NORM = False
_C.MODEL.VHEAT.LAYER_SCALE = None   # initial value of the branch scales, None for none
_C.MODEL.VHEAT.DCT_IMPL = 'matmul'     # or 'fft' (see classification/models/dct.py)
_C.MODEL.VHEAT.PATCH_NORM = True    # official key; the official model never reads it (its stem always normalises)

# MODEL.TYPE timm: any timm model, trained with the same recipe (data, augmentation, schedule, EMA) as vHeat
_C.MODEL.TIMM = CN()
_C.MODEL.TIMM.NAME = ''             # a timm model name, e.g. swin_tiny_patch4_window7_224
_C.MODEL.TIMM.KWARGS = CN(new_allowed=True)  # its keyword arguments (in_chans, img_size, depths, ...)

_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0
_C.TRAIN.EPOCHS = 300
_C.TRAIN.WARMUP_EPOCHS = 20
_C.TRAIN.WEIGHT_DECAY = 0.08
_C.TRAIN.BASE_LR = 5e-4             # per 512 images per optimizer step, scaled linearly (see scale_learning_rates)
_C.TRAIN.WARMUP_LR = 5e-7
_C.TRAIN.MIN_LR = 5e-6
_C.TRAIN.CLIP_GRAD = 5.0            # max gradient norm, 0 for no clipping
_C.TRAIN.AUTO_RESUME = True
_C.TRAIN.ACCUMULATION_STEPS = 1
_C.TRAIN.USE_CHECKPOINT = False     # gradient checkpointing
_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = 'cosine'     # or linear, step, multistep (the official schedulers)
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30   # step: decay every this many epochs
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1    # step: by this factor
_C.TRAIN.LR_SCHEDULER.WARMUP_PREFIX = True  # cosine: the cosine starts after the warm-up
_C.TRAIN.LR_SCHEDULER.GAMMA = 0.1         # multistep: decay factor at each milestone
_C.TRAIN.LR_SCHEDULER.MULTISTEPS = []     # multistep: milestone epochs
_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = 'adamw'         # official: adamw, sgd (Nesterov), fused_adam, fused_lamb; or a timm name
_C.TRAIN.OPTIMIZER.EPS = 1e-8
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9
_C.TRAIN.LAYER_DECAY = 1.0          # official key, read only by SimMIM fine-tuning: no effect on vHeat, as officially
_C.TRAIN.MOE = CN()
_C.TRAIN.MOE.SAVE_MASTER = False    # official key (Swin MoE): no effect

_C.AUG = CN()
_C.AUG.COLOR_JITTER = 0.4
_C.AUG.AUTO_AUGMENT = 'rand-m9-mstd0.5-inc1'   # '' or 'none' for none
_C.AUG.REPROB = 0.25
_C.AUG.REMODE = 'pixel'
_C.AUG.RECOUNT = 1
_C.AUG.SCALE = (0.08, 1.0)          # RandomResizedCrop area range
_C.AUG.HFLIP = 0.5
_C.AUG.MIXUP = 0.8
_C.AUG.CUTMIX = 1.0
_C.AUG.CUTMIX_MINMAX = None
_C.AUG.MIXUP_PROB = 1.0
_C.AUG.MIXUP_SWITCH_PROB = 0.5
_C.AUG.MIXUP_MODE = 'batch'

_C.TEST = CN()
_C.TEST.CROP = True                 # resize to IMG_SIZE / 0.875, then centre-crop
_C.TEST.SEQUENTIAL = False          # official keys; evaluation here always counts every image exactly once
_C.TEST.SHUFFLE = False

_C.MODEL_EMA = True
_C.MODEL_EMA_DECAY = 0.9999
_C.MODEL_EMA_FORCE_CPU = False      # keep the EMA weights on the CPU (--model_ema_force_cpu)
_C.AMP_ENABLE = True                # autocast on CUDA (CPU runs in float32)
_C.AMP_DTYPE = 'float16'            # or 'bfloat16'
_C.AMP_OPT_LEVEL = ''               # official, deprecated (apex): O0 turns AMP off, O1/O2 change nothing
_C.ENABLE_AMP = False               # official key of SimMIM: no effect
_C.FUSED_WINDOW_PROCESS = False     # official keys of Swin's fused kernels: vHeat never reads them
_C.FUSED_LAYERNORM = False
_C.COMPILE = False                  # torch.compile the network for training and evaluation
_C.CPU_STREAMING = False            # CPU inference (evaluation, throughput) through the streaming engine
_C.OUTPUT = ''
_C.TAG = 'default'
_C.SAVE_FREQ = 1                    # keep ckpt_epoch_N.pth every SAVE_FREQ epochs (ckpt_latest.pth every epoch)
_C.PRINT_FREQ = 10
_C.SEED = 0
_C.EVAL_MODE = False
_C.THROUGHPUT_MODE = False
_C.LOCAL_RANK = 0


def _merge_file(config: CN, cfg_file: str) -> None:
    """Merge a YAML file and, first, the files its ``BASE`` list names (relative to it)."""
    if not os.path.isfile(cfg_file):
        raise ConfigError(f'config file not found: {cfg_file}')
    with open(cfg_file) as f:
        yaml_cfg = yaml.safe_load(f) or {}
    for base in yaml_cfg.setdefault('BASE', ['']):
        if base:
            _merge_file(config, os.path.join(os.path.dirname(cfg_file), base))
    config.merge_from_file(cfg_file)


def _merge(config: CN, what: str, merge) -> None:
    """Run a yacs merge and turn its KeyError/ValueError into a one-line ConfigError."""
    try:
        merge()
    except KeyError as e:
        message = str(e.args[0]) if e.args else str(e)
        raise ConfigError(f'{what}: {message} (see classification/config.py for the valid keys)') from None
    except (ValueError, AssertionError, yaml.YAMLError) as e:
        raise ConfigError(f'{what}: {str(e).splitlines()[0]}') from None


DASHED_FLAGS = ('batch_size', 'data_path', 'accumulation_steps', 'cache_mode', 'amp_opt_level')


def get_config(args) -> CN:
    """Defaults, then ``args.cfg``, then ``args.opts`` and the dedicated flags."""
    config = _C.clone()
    config.defrost()
    if getattr(args, 'cfg', None):
        _merge(config, args.cfg, lambda: _merge_file(config, args.cfg))
    if getattr(args, 'opts', None):
        if len(args.opts) % 2:
            raise ConfigError(f'--opts needs KEY VALUE pairs, got {args.opts}')
        _merge(config, '--opts', lambda: config.merge_from_list(args.opts))
    flags = {
        'batch_size': 'DATA.BATCH_SIZE', 'data_path': 'DATA.DATA_PATH', 'resume': 'MODEL.RESUME',
        'pretrained': 'MODEL.PRETRAINED', 'accumulation_steps': 'TRAIN.ACCUMULATION_STEPS',
        'output': 'OUTPUT', 'tag': 'TAG', 'model_ema': 'MODEL_EMA', 'model_ema_decay': 'MODEL_EMA_DECAY',
        'model_ema_force_cpu': 'MODEL_EMA_FORCE_CPU', 'cache_mode': 'DATA.CACHE_MODE',
        'optim': 'TRAIN.OPTIMIZER.NAME', 'amp_opt_level': 'AMP_OPT_LEVEL',
    }
    given = {}
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            given[key] = '--' + flag.replace('_', '-') if flag in DASHED_FLAGS else '--' + flag
            node, leaf = config, key.split('.')
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = value
    if getattr(args, 'zip', False):
        config.DATA.ZIP_MODE = True
    if getattr(args, 'fused_layernorm', False):
        config.FUSED_LAYERNORM = True
    if config.AMP_OPT_LEVEL == 'O0':  # the official meaning of the deprecated apex level: no mixed precision
        config.AMP_ENABLE = False
    if getattr(args, 'use_checkpoint', False):
        config.TRAIN.USE_CHECKPOINT = True
    if getattr(args, 'disable_amp', False):
        config.AMP_ENABLE = False
    if getattr(args, 'compile', False):
        config.COMPILE = True
    if getattr(args, 'cpu_streaming', False):
        config.CPU_STREAMING = True
    config.EVAL_MODE = bool(getattr(args, 'eval', False))
    config.THROUGHPUT_MODE = bool(getattr(args, 'throughput', False))
    config.LOCAL_RANK = int(getattr(args, 'local_rank', 0) or 0)
    try:
        validate(config)
    except ConfigError as e:  # a value given by a flag: name the flag too
        key, _, rest = str(e).partition(' ')
        raise ConfigError(f'{given[key]} ({key}) {rest}' if key in given else str(e)) from None
    config.OUTPUT = os.path.join(config.OUTPUT or 'output', config.MODEL.NAME, config.TAG)
    config.freeze()
    return config


LR_REFERENCE_BATCH = 512


def optimizer_name(name: str) -> str:
    """timm's name for an optimizer of the official config (``fused_adam`` is timm's ``fusedadam``)."""
    return OFFICIAL_OPTIMIZERS.get(str(name).lower(), str(name).lower())


def total_batch(config: CN, world_size: int) -> int:
    """Images per optimizer step: per-process batch x processes x accumulation steps."""
    return config.DATA.BATCH_SIZE * world_size * config.TRAIN.ACCUMULATION_STEPS


def _get(config: CN, key: str):
    for part in key.split('.'):
        config = config[part]
    return config


def _require(config: CN, key: str, allowed: str, test) -> None:
    value = _get(config, key)
    try:
        ok = bool(test(value))
    except (TypeError, ValueError, KeyError, IndexError):
        ok = False
    if not ok:
        raise ConfigError(f'{key} must be {allowed}, got {value!r}')


def _integer(config: CN, key: str, minimum: int) -> None:
    _require(config, key, f'an integer >= {minimum}',
             lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum)


def _number(config: CN, key: str, allowed: str, test) -> None:
    _require(config, key, allowed, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and test(v))


def _choice(config: CN, key: str, choices) -> None:
    _require(config, key, 'one of ' + ', '.join(map(repr, choices)), lambda v: v in choices)


def _flag(config: CN, key: str) -> None:
    _require(config, key, 'True or False', lambda v: isinstance(v, bool))


def _pair(config: CN, key: str, allowed: str, test) -> None:
    _require(config, key, allowed, lambda v: len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and test(*v))


def _auto_augment_policy(value: str) -> bool:
    """Whether timm can build the augmentation ``value`` names ('' and 'none' for none)."""
    if value in ('', 'none'):
        return True
    from timm.data import auto_augment
    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    build = (auto_augment.rand_augment_transform if value.startswith('rand') else
             auto_augment.augment_and_mix_transform if value.startswith('augmix') else
             auto_augment.auto_augment_transform)
    try:
        build(value, hparams)
    except (AssertionError, KeyError, ValueError, IndexError):
        return False
    return True


def validate(config: CN) -> None:
    """Check every value before any work; a ConfigError names the first bad key and what it may be."""
    from timm.data.transforms import str_to_pil_interp
    from timm.optim import list_optimizers
    _integer(config, 'DATA.BATCH_SIZE', 1)
    _choice(config, 'DATA.DATASET', DATASETS)
    _flag(config, 'DATA.ZIP_MODE')
    _choice(config, 'DATA.CACHE_MODE', CACHE_MODES)
    _flag(config, 'DATA.RANK_SHARDS')
    _integer(config, 'DATA.TRAIN_SUBSET', 0)
    _integer(config, 'DATA.WDS.SHUFFLE_BUFFER', 1)
    if config.DATA.ZIP_MODE and config.DATA.DATASET != 'imagenet':
        raise ConfigError(f'DATA.ZIP_MODE (--zip) reads the ImageNet zip layout; DATA.DATASET is '
                          f'{config.DATA.DATASET!r}')
    _require(config, 'DATA.INTERPOLATION', "'random' or a PIL filter name (bicubic, bilinear, ...)",
             lambda v: v == 'random' or str_to_pil_interp(v) is not None)
    _flag(config, 'DATA.PIN_MEMORY')
    _integer(config, 'DATA.NUM_WORKERS', 0)
    _choice(config, 'MODEL.TYPE', ('vHeat', 'timm'))
    if config.MODEL.TYPE == 'timm':
        import timm
        _require(config, 'MODEL.TIMM.NAME', "a timm model name (timm.list_models(), e.g. 'resnet18')",
                 lambda v: bool(v) and timm.is_model(v))
        if 'in_chans' in config.MODEL.TIMM.KWARGS:
            _require(config, 'MODEL.TIMM.KWARGS.in_chans', '1 or 3 (the data pipeline makes greyscale or RGB '
                     'images)', lambda v: v in (1, 3))
        if config.CPU_STREAMING:
            raise ConfigError('CPU_STREAMING (--cpu-streaming) is an engine of vHeat; MODEL.TYPE is timm')
    _integer(config, 'MODEL.NUM_CLASSES', 1)
    for key in ('MODEL.DROP_RATE', 'MODEL.DROP_PATH_RATE', 'MODEL.LABEL_SMOOTHING'):
        _number(config, key, 'in [0, 1)', lambda v: 0 <= v < 1)
    _choice(config, 'MODEL.VHEAT.PATCH_SIZE', (4,))
    _require(config, 'MODEL.VHEAT.IN_CHANS', '1 or 3 (the data pipeline makes greyscale or RGB images)',
             lambda v: v in (1, 3))
    _integer(config, 'MODEL.VHEAT.EMBED_DIM', 2)
    _require(config, 'MODEL.VHEAT.DEPTHS', 'a non-empty list of integers >= 1',
             lambda v: len(v) > 0 and all(isinstance(d, int) and d >= 1 for d in v))
    _number(config, 'MODEL.VHEAT.MLP_RATIO', '> 0', lambda v: v > 0)
    _flag(config, 'MODEL.VHEAT.POST_NORM')
    _require(config, 'MODEL.VHEAT.LAYER_SCALE', 'None or a number > 0',
             lambda v: v is None or (isinstance(v, (int, float)) and v > 0))
    _choice(config, 'MODEL.VHEAT.DCT_IMPL', ('matmul', 'fft'))
    _flag(config, 'MODEL.VHEAT.PATCH_NORM')
    stride = 4 * 2 ** (len(config.MODEL.VHEAT.DEPTHS) - 1)
    _require(config, 'DATA.IMG_SIZE', f'an integer >= {stride} (every stage needs a frequency embedding of at '
             f'least 1x1, at stride {stride} in the last of {len(config.MODEL.VHEAT.DEPTHS)} stages)',
             lambda v: isinstance(v, int) and v >= stride)
    _integer(config, 'TRAIN.START_EPOCH', 0)
    _integer(config, 'TRAIN.EPOCHS', 1)
    _require(config, 'TRAIN.WARMUP_EPOCHS', f'an integer in [0, TRAIN.EPOCHS = {config.TRAIN.EPOCHS}]',
             lambda v: isinstance(v, int) and 0 <= v <= config.TRAIN.EPOCHS)
    _number(config, 'TRAIN.BASE_LR', '> 0', lambda v: v > 0)
    for key in ('TRAIN.WARMUP_LR', 'TRAIN.MIN_LR', 'TRAIN.WEIGHT_DECAY', 'TRAIN.CLIP_GRAD'):
        _number(config, key, '>= 0', lambda v: v >= 0)
    _flag(config, 'TRAIN.AUTO_RESUME')
    _integer(config, 'TRAIN.ACCUMULATION_STEPS', 1)
    _flag(config, 'TRAIN.USE_CHECKPOINT')
    if optimizer_name(config.TRAIN.OPTIMIZER.NAME).startswith('fused'):
        import importlib.util
        if importlib.util.find_spec('apex') is None:
            raise ConfigError(f'TRAIN.OPTIMIZER.NAME {config.TRAIN.OPTIMIZER.NAME!r} needs NVIDIA apex, which is not '
                              "installed; use 'adamw'")
    _require(config, 'TRAIN.OPTIMIZER.NAME', "'adamw', 'sgd', 'fused_adam', 'fused_lamb' or a timm optimizer name "
             "(timm.optim.list_optimizers())", lambda v: optimizer_name(v) in list_optimizers())
    _choice(config, 'TRAIN.LR_SCHEDULER.NAME', SCHEDULERS)
    _number(config, 'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '> 0', lambda v: v > 0)
    _number(config, 'TRAIN.LR_SCHEDULER.DECAY_RATE', 'in (0, 1]', lambda v: 0 < v <= 1)
    _number(config, 'TRAIN.LR_SCHEDULER.GAMMA', 'in (0, 1]', lambda v: 0 < v <= 1)
    _flag(config, 'TRAIN.LR_SCHEDULER.WARMUP_PREFIX')
    _require(config, 'TRAIN.LR_SCHEDULER.MULTISTEPS', 'a list of increasing integer epochs',
             lambda v: all(isinstance(e, int) for e in v) and list(v) == sorted(set(v)))
    if config.TRAIN.LR_SCHEDULER.NAME == 'multistep':
        _require(config, 'TRAIN.LR_SCHEDULER.MULTISTEPS', f'a non-empty list of epochs >= TRAIN.WARMUP_EPOCHS '
                 f'({config.TRAIN.WARMUP_EPOCHS}) for the multistep schedule',
                 lambda v: len(v) > 0 and min(v) >= config.TRAIN.WARMUP_EPOCHS)
    _number(config, 'TRAIN.LAYER_DECAY', 'in (0, 1]', lambda v: 0 < v <= 1)
    _flag(config, 'TRAIN.MOE.SAVE_MASTER')
    _number(config, 'TRAIN.OPTIMIZER.EPS', '> 0', lambda v: v > 0)
    _pair(config, 'TRAIN.OPTIMIZER.BETAS', 'two numbers in [0, 1)', lambda a, b: 0 <= a < 1 and 0 <= b < 1)
    _number(config, 'TRAIN.OPTIMIZER.MOMENTUM', 'in [0, 1]', lambda v: 0 <= v <= 1)
    _number(config, 'AUG.COLOR_JITTER', '>= 0', lambda v: v >= 0)
    _require(config, 'AUG.AUTO_AUGMENT', "'' or 'none', or a timm policy such as 'rand-m9-mstd0.5-inc1'",
             _auto_augment_policy)
    for key in ('AUG.REPROB', 'AUG.HFLIP', 'AUG.MIXUP_PROB', 'AUG.MIXUP_SWITCH_PROB'):
        _number(config, key, 'in [0, 1]', lambda v: 0 <= v <= 1)
    _choice(config, 'AUG.REMODE', ('const', 'rand', 'pixel'))
    _integer(config, 'AUG.RECOUNT', 1)
    _pair(config, 'AUG.SCALE', 'two numbers 0 < min <= max <= 1', lambda a, b: 0 < a <= b <= 1)
    for key in ('AUG.MIXUP', 'AUG.CUTMIX'):
        _number(config, key, '>= 0', lambda v: v >= 0)
    _require(config, 'AUG.CUTMIX_MINMAX', 'None or two numbers 0 < min < max <= 1',
             lambda v: v is None or (len(v) == 2 and 0 < v[0] < v[1] <= 1))
    _choice(config, 'AUG.MIXUP_MODE', ('batch', 'pair', 'elem'))
    for key in ('TEST.CROP', 'TEST.SEQUENTIAL', 'TEST.SHUFFLE', 'MODEL_EMA', 'MODEL_EMA_FORCE_CPU', 'AMP_ENABLE',
                'ENABLE_AMP', 'COMPILE', 'CPU_STREAMING', 'FUSED_WINDOW_PROCESS', 'FUSED_LAYERNORM'):
        _flag(config, key)
    _choice(config, 'AMP_OPT_LEVEL', ('', 'O0', 'O1', 'O2'))
    _number(config, 'MODEL_EMA_DECAY', 'in (0, 1)', lambda v: 0 < v < 1)
    _choice(config, 'AMP_DTYPE', ('float16', 'bfloat16'))
    _integer(config, 'SAVE_FREQ', 1)
    _integer(config, 'PRINT_FREQ', 1)
    _integer(config, 'SEED', 0)


def scale_learning_rates(config: CN, world_size: int) -> CN:
    """The official linear scaling rule: the configured BASE_LR, WARMUP_LR and MIN_LR are per 512 images per
    optimizer step (accumulation included), so 16 processes x 128 images give 4x the configured rates."""
    scale = total_batch(config, world_size) / LR_REFERENCE_BATCH
    config.defrost()
    config.TRAIN.BASE_LR *= scale
    config.TRAIN.WARMUP_LR *= scale
    config.TRAIN.MIN_LR *= scale
    config.freeze()
    return config
