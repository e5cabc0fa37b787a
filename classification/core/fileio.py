"""Files written whole or not at all: checkpoints, results, JSON and figures.

Each is written under a temporary name, fsynced, renamed into place and its folder fsynced: a crash, a kill or a
power loss leaves the old file or the new one, never half of one; a failing write removes its temporary file and
raises an OSError whose message names the path and the cause (what every command reports in one line). It imports
nothing of the project, so that mmengine's checkpoint hook (:mod:`classification.mm.hooks`) loads no model code.
"""
import contextlib
import io
import json
import os

import torch


def commit_file(tmp: str, path: str) -> None:
    """Make the finished file ``tmp`` durable and rename it over ``path``, then make the rename durable."""
    handle = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # some file systems refuse to fsync a folder
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_durably(path: str, data, what: str = 'checkpoint') -> None:
    """Atomic, durable replacement of ``path`` by ``data`` (bytes-like); ``what`` names the file in the OSError a
    failed write raises (the previous file is untouched)."""
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
        commit_file(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(f'cannot write {what} {path}: {e.strerror or e}') from None


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically and durably (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_durably(path, buffer.getbuffer())


def write_output(path: str, data: bytes) -> None:
    """A result file, its folder made first: a failing command never leaves a half-written file, nor removes the
    previous one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
    write_durably(path, data, 'file')


def write_json(path: str, obj, indent: int = 2) -> None:
    write_output(path, (json.dumps(obj, indent=indent) + '\n').encode())


def save_figure(fig, path: str, **savefig_kwargs) -> None:
    """A matplotlib figure as a PNG written by :func:`write_output`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', **savefig_kwargs)
    write_output(path, buffer.getvalue())
