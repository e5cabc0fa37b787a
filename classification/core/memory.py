"""Memory of a step: its peak (:func:`peak_memory`), and what autograd keeps for backward (:func:`saved_bytes`): the
bytes of every saved tensor, by the module and the operation that saved it.

Each storage counts once (a view saved by two operations is one allocation), and parameters count never (they are
resident whether or not a backward follows). A tensor belongs to the innermost module whose forward was running
when autograd saved it, and to the torch function being called then (``linear``, ``layer_norm``, ``matmul`` ...;
for a custom autograd function's ``save_for_backward``, the Python function that applied it). What
``torch.utils.checkpoint`` recomputes is not saved, and not counted.
"""
import ctypes
import sys
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode


class _CurrentFunction(TorchFunctionMode):
    """Remembers the outermost torch function being called (its name), for the pack hook to read."""

    def __init__(self):
        super().__init__()
        self.name = ''

    def __torch_function__(self, func, types, args=(), kwargs=None):
        outer = not self.name
        if outer:
            self.name = getattr(func, '__name__', str(func))
        try:
            return func(*args, **(kwargs or {}))
        finally:
            if outer:
                self.name = ''


def _caller() -> str:
    """The Python function that is applying a custom autograd function (whose ``save_for_backward`` packs)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in (__file__, torch.autograd.function.__file__):
        frame = frame.f_back
    return frame.f_code.co_name.strip('_') if frame is not None else 'autograd.Function'


def saved_bytes(model: nn.Module, forward: Callable[[], object]) -> Dict[Tuple[str, str], int]:
    """Run ``forward()`` (a forward of ``model`` with gradients on) and return {(module name, operation): bytes
    autograd saved for backward}; the output is released before returning."""
    names = {id(m): name for name, m in model.named_modules()}
    stack: List[str] = []
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = set()
    totals: Dict[Tuple[str, str], int] = defaultdict(int)
    current = _CurrentFunction()

    def pre_hook(module, args):
        if id(module) in names:
            stack.append(names[id(module)])

    def post_hook(module, args, output):
        if id(module) in names and stack:
            stack.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen and ptr != 0:
            seen.add(ptr)
            totals[(stack[-1] if stack else '', current.name or _caller())] += storage.nbytes()
        return t

    handles = [nn.modules.module.register_module_forward_pre_hook(pre_hook),
               nn.modules.module.register_module_forward_hook(post_hook)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), current:
            out = forward()
        del out
    finally:
        for h in handles:
            h.remove()
    return dict(totals)


def malloc_returns_large_blocks() -> None:
    """Make glibc serve blocks >= 64 KiB by mmap and unmap them on free (no dynamic threshold).

    Without this, freed activations stay resident in malloc's heap and a later forward reuses them
    without raising the resident set, so peak-RSS increases would undercount.
    """
    try:
        ctypes.CDLL('libc.so.6').mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _release_free_heap() -> None:
    """Give glibc's free heap pages back to the system (``malloc_trim``), so that what a call allocates next
    is fresh pages that raise the resident set, not free heap that is already resident."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory added by one call of ``fn``, in bytes.

    CUDA: ``max_memory_allocated`` above what was allocated before. CPU (Linux): the process's peak resident
    set (VmHWM, reset through /proc/self/clear_refs) above its resident set before the call (free heap given
    back first), i.e. activations, workspaces and anything else the call makes resident; the weights are
    already resident and not included.
    """
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    _release_free_heap()
    base = _status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current resident set
    fn()
    return float(_status_kib('VmHWM') - base) * 1024
