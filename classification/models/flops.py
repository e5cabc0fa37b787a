"""Parameter and FLOP counts with fvcore (FLOPs as multiply-adds, as in the paper's tables).

fvcore is imported when something is counted, not with this module: the trainer imports this module at start-up,
and every command's error path should stay free of fvcore's import.
"""
import math
import warnings
from typing import Tuple

import torch


def _fvcore_nn():
    """``fvcore.nn``. Its ``focal_loss`` module decorates functions with ``torch.jit.script`` when imported, which
    torch >= 2.14 answers with a FutureWarning (TorchScript is deprecated); it is fvcore's, says nothing about this
    project's use (no focal loss is scripted here), and is silenced for that import alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
        import fvcore.nn
        import fvcore.nn.jit_handles
    return fvcore.nn


def _matmul_flop(inputs, outputs) -> int:
    """Multiply-adds of a broadcasting ``torch.matmul``.

    fvcore's own handle counts ``prod(a.shape) * b.shape[-1]``, which drops the batch dimensions of ``b``
    when ``a`` is a plain matrix, as in the DCT (D @ x with x of shape (B, H, W, C)).
    """
    get_shape = _fvcore_nn().jit_handles.get_shape
    out_shape = get_shape(outputs[0])
    inner = get_shape(inputs[0])[-1]
    return math.prod(out_shape) * inner


def flop_count(model: torch.nn.Module, input_shape: Tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """fvcore's FLOP count (multiply-adds) of one forward pass on a zero input of ``input_shape``.

    timm's fused attention is switched to its explicit matmuls while counting: fvcore has no handle for
    ``scaled_dot_product_attention`` and would drop the attention of DeiT and Swin (``q @ k.T`` and ``attn @ v``
    are counted by the matmul handle).
    """
    param = next(model.parameters())
    x = torch.zeros(input_shape, device=param.device, dtype=param.dtype)
    analysis = _fvcore_nn().FlopCountAnalysis(model, x).set_op_handle('aten::matmul', _matmul_flop)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    was_training = model.training
    fused = [m for m in model.modules() if getattr(m, 'fused_attn', False)]
    for m in fused:
        m.fused_attn = False
    model.eval()
    try:
        return int(analysis.total())
    finally:
        model.train(was_training)
        for m in fused:
            m.fused_attn = True


def param_count(model: torch.nn.Module) -> int:
    """fvcore's parameter count (every ``nn.Parameter``, the inference-layout ``k_exp`` included)."""
    return int(_fvcore_nn().parameter_count(model)[''])
