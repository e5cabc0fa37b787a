"""What every command line of the project shares: argument checks before any work, and bad input answered with
one ``error: ...`` line on stderr and exit status 1 (argparse's own usage errors keep their status 2). Bad input
is any :class:`~classification.models.errors.VHeatError` or OSError, caught here and nowhere else.

    with exit_on_errors():
        require_file(args.checkpoint, '--checkpoint')
        ...
"""
import contextlib
import gc
import os
import sys
from typing import Iterable, NoReturn, Optional

from classification.models.errors import VHeatError

from .errors import UsageError

BAD_INPUT = (VHeatError, OSError)


def exit_with_error(message: str) -> NoReturn:
    """``error: message`` on stderr in one write, then exit status 1. ``sys.exit(message)`` writes the message and
    its newline separately, so the ranks of one launch, sharing stderr, could join their lines into one."""
    sys.stderr.write(f'error: {" ".join(str(message).split())}\n')
    sys.stderr.flush()
    raise SystemExit(1)


def describe(error: BaseException) -> str:
    """One line for bad input: its message, or for an OSError the cause and the file. An error a DataLoader worker
    re-raised carries the worker's traceback: its last line, without the class name, is the message."""
    if isinstance(error, OSError) and error.filename is not None:
        return f'{error.strerror or error}: {error.filename}'
    text = str(error.args[0]) if error.args else str(error)
    if 'Traceback' in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split(': ', 1)[1] if ': ' in last else last
    return text or type(error).__name__


@contextlib.contextmanager
def exit_on_errors():
    """Run the body; bad input (:data:`BAD_INPUT`) ends the command with one line."""
    try:
        yield
    except BAD_INPUT as e:
        exit_with_error(describe(e))


def freeze_startup_objects() -> None:
    """Call once the command has built what it runs (model, data, runner), before its loop. ``gc.freeze()`` moves
    every object alive then (the modules of torch, timm and mm*: about 600,000 objects with mmdet) to the collector's
    permanent generation, which no later collection walks: DataLoader workers forked afterwards do not copy the
    memory pages a collection would touch (the use Python documents), and the collections at the process's exit
    skip them (1.3 s of a command that imported torch and timm, 2 s with mmdet and mmseg, on 2 CPU cores)."""
    gc.freeze()


def require_file(path: Optional[str], arg: str, what: str = 'file') -> str:
    if not path or not os.path.isfile(path):
        raise UsageError(f'{arg}: {what} not found: {path}')
    return path


def require_folder(path: Optional[str], arg: str, what: str = 'folder') -> str:
    if not path or not os.path.isdir(path):
        raise UsageError(f'{arg}: {what} not found: {path}')
    return path


def require_positive(value, arg: str, minimum: float = 1):
    """``value`` (a number, or each number of a list) >= ``minimum``."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is None or v < minimum:
            raise UsageError(f'{arg} must be {"positive" if minimum == 1 else f">= {minimum}"}, got {v}')
    return value


def require_choice(value, arg: str, choices: Iterable) -> None:
    choices = list(choices)
    if value not in choices:
        raise UsageError(f'{arg}: unknown value {value!r}; expected one of {", ".join(map(str, choices))}')


def require_model(name: str, arg: str = '--model') -> str:
    """A name timm can create (vHeat's included once ``classification.models`` is imported)."""
    import timm

    import classification.models  # noqa: F401  (registers vheat_*)
    if not timm.is_model(name):
        close = timm.list_models(f'*{name.split("_")[0]}*')[:5] if name else []
        raise UsageError(f'{arg}: unknown model {name!r}' + (f' (similar: {", ".join(close)})' if close else
                                                              ' (timm.list_models() lists them)'))
    return name


def require_device(device: str, arg: str = '--device'):
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``...)."""
    import torch
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f'{arg}: {device!r} is not a device name (cpu, cuda, cuda:1, ...)') from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'{arg} {device}: no CUDA GPU is available on this machine')
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f'{arg} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    elif parsed.type != 'cpu':
        raise UsageError(f'{arg} {device}: only cpu and cuda devices are supported')
    return parsed
