"""The trainer's checkpoints: which one to resume, reading them on every rank alike, weights and optimizer states
(the official trainer's included) into the configured model."""
import glob
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from timm.models._helpers import clean_state_dict

from classification.core.errors import CheckpointError
from classification.models import find_state_dict, load_checkpoint
from classification.models.errors import VHeatError
from classification.models.serialization import read_bytes
from classification.models.vheat import rename_official_key
from classification.models import weights


def auto_resume_file(output_dir: str):
    """The newest ``ckpt_epoch_*.pth`` / ``ckpt_latest.pth`` in ``output_dir``, or None. The official trainer's
    ``ckpt_epoch_best.pth`` and ``ckpt_epoch_ema_best.pth`` are not training states to continue: skipped, as
    officially."""
    candidates = glob.glob(os.path.join(output_dir, 'ckpt_epoch_*.pth'))
    candidates += glob.glob(os.path.join(output_dir, 'ckpt_latest.pth'))
    candidates = [c for c in candidates if 'best' not in os.path.basename(c)]
    return max(candidates, key=os.path.getmtime) if candidates else None


def classifier_keys(model: torch.nn.Module) -> List[str]:
    """The state-dict keys of the model's classifier (timm's ``get_classifier()``), [] if it has none."""
    get = getattr(model, 'get_classifier', None)
    classifier = get() if get is not None else None
    names = {id(m): n for n, m in model.named_modules()}
    if classifier is None or id(classifier) not in names:
        return []
    return [f'{names[id(classifier)]}.{k}' for k in classifier.state_dict()]


def load_weights(model: torch.nn.Module, state_dict, source: str, new_classifier_ok: bool = False) -> List[str]:
    """``load_state_dict(strict=True)`` that names the mismatched keys instead of a long torch message. Official
    vHeat names are converted (``convert_state_dict``) and DDP/compile prefixes removed. ``new_classifier_ok``: a
    classifier of another number of classes is left as initialised (fine-tuning); returns its keys then."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'{source}: expected a state dict of tensors, got {type(state_dict).__name__}')
    loaded = weights.load_weights(model, state_dict, source, 'the configured model (another architecture?)',
                                  skip_unfit=classifier_keys(model) if new_classifier_ok else (),
                                  error=CheckpointError)
    return list(loaded.skipped)


def is_official_checkpoint(checkpoint: dict) -> bool:
    """Written by the official trainer: official parameter names (``patch_embed``, ``layers``)."""
    return any(k.startswith(('patch_embed.', 'module.patch_embed.')) for k in checkpoint['model'])


def official_optimizer_state(checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             source: str) -> dict:
    """The official trainer's optimizer state re-indexed for ``optimizer`` over ``model``.

    The official optimizer has two groups (``set_weight_decay``: weights with decay, then 1-D parameters and
    biases without) over its ``named_parameters`` order, which is the order of the checkpoint's ``model`` keys;
    this optimizer (timm's groups) lists the same parameters in another order. Each state is matched by
    parameter name; anything that does not match exactly is a CheckpointError saying so.
    """
    official = clean_state_dict(checkpoint['model'])
    state = checkpoint['optimizer']

    def refuse(why: str):
        return CheckpointError(f'{source}: its optimizer state cannot be matched to this model\'s parameters ({why}); '
                               f'to start a new run from its weights, use --pretrained {source}')

    groups = state.get('param_groups', [])
    decay = [k for k, v in official.items() if not (v.ndim <= 1 or k.endswith('.bias'))]
    no_decay = [k for k, v in official.items() if v.ndim <= 1 or k.endswith('.bias')]
    if len(groups) != 2 or [len(g['params']) for g in groups] != [len(decay), len(no_decay)]:
        raise refuse(f'{[len(g["params"]) for g in groups]} parameters in its groups, the official grouping of its '
                     f'model gives {[len(decay), len(no_decay)]}')
    by_name = {rename_official_key(name): (index, official[name].shape)
               for group, names in zip(groups, (decay, no_decay)) for index, name in zip(group['params'], names)}
    names = {id(p): n for n, p in model.named_parameters()}
    ours = optimizer.state_dict()
    if set(by_name) != set(names.values()):
        differ = sorted(set(by_name) ^ set(names.values()))
        raise refuse(f'{len(differ)} parameter names differ, e.g. {", ".join(differ[:3])}')
    mapped: Dict[int, dict] = {}
    for group, saved in zip(optimizer.param_groups, ours['param_groups']):
        official_group = groups[1] if group.get('weight_decay', 0) == 0 else groups[0]
        for param, index in zip(group['params'], saved['params']):
            official_index, shape = by_name[names[id(param)]]
            if shape.numel() != param.numel():
                raise refuse(f'{names[id(param)]} has {shape.numel()} values, the model {param.numel()}')
            entry = state['state'].get(official_index)
            if entry is not None:  # 1x1-convolution MLP weights (and their moments) become Linear weights
                mapped[index] = {k: v.reshape(param.shape) if k != 'step' and torch.is_tensor(v) else v
                                 for k, v in entry.items()}
        saved.update({k: official_group[k] for k in ('lr', 'initial_lr') if k in official_group})
    kind = [('betas' in g, 'momentum' in g) for g in (ours['param_groups'][0], groups[0])]
    if kind[0] != kind[1]:
        raise refuse('it is the state of another kind of optimizer')
    ours['state'] = mapped
    return ours


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, checkpoint: dict,
                         source: str) -> None:
    """Resume the optimizer from our checkpoints or the official trainer's (mapped by parameter)."""
    state = official_optimizer_state(checkpoint, model, optimizer, source) if is_official_checkpoint(checkpoint) \
        else checkpoint['optimizer']
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f'{source}: its optimizer state does not fit this run ({str(e).splitlines()[0]}); '
                              f'to start a new run from its weights, use --pretrained {source}') from None


def read_checkpoint(path: str, data: Optional[bytes] = None) -> dict:
    """``load_checkpoint`` (weights_only), with a plain state dict accepted as ``{'model': state_dict}``."""
    checkpoint = load_checkpoint(path, data=data)
    model = find_state_dict(checkpoint, 'model', path)
    return dict(checkpoint, model=model) if 'model' in checkpoint else {'model': model}


def shared_checkpoint(path: Optional[str], device: torch.device) -> Tuple[Optional[str], Optional[dict]]:
    """(file name, checkpoint) of the checkpoint rank 0 chose (``path`` on rank 0; ignored elsewhere), on every
    rank, or (None, None).

    Rank 0 reads and checks the file and broadcasts its name and bytes; every rank loads them weights-only. No rank
    reads its own file system, so nodes without a shared one still start from the same state; if rank 0 cannot
    use the file, every rank raises the same CheckpointError.
    """
    if not dist.is_initialized():
        return (path, read_checkpoint(path)) if path else (None, None)
    name, data, failed = (path or '').encode(), b'', False
    if dist.get_rank() == 0 and path:
        try:
            data = read_bytes(path)
            read_checkpoint(path, data)
        except (VHeatError, FileNotFoundError) as e:
            data, failed = str(e.args[0] if e.args else e).encode(), True
    header = torch.tensor([len(name), len(data), int(failed)], dtype=torch.int64, device=device)
    dist.broadcast(header, 0)
    sizes, failed = header[:2].tolist(), bool(header[2])
    payload = torch.frombuffer(bytearray(name + data), dtype=torch.uint8) if dist.get_rank() == 0 and sum(sizes) \
        else torch.empty(sum(sizes), dtype=torch.uint8)
    if sum(sizes):
        payload = payload.to(device)
        dist.broadcast(payload, 0)
    received = payload.cpu().numpy().tobytes()
    name, data = received[:sizes[0]].decode(), received[sizes[0]:]
    if failed:
        raise CheckpointError(data.decode())
    return (name, read_checkpoint(name, data)) if name else (None, None)
