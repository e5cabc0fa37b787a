"""Parameter and FLOP counts with fvcore (FLOPs as multiply-adds, as in the paper's tables)."""
import math
from typing import Tuple

import torch
from fvcore.nn import FlopCountAnalysis, parameter_count
from fvcore.nn.jit_handles import get_shape


def _matmul_flop(inputs, outputs) -> int:
    """Multiply-adds of a broadcasting ``torch.matmul``.

    fvcore's own handle counts ``prod(a.shape) * b.shape[-1]``, which drops the batch dimensions of ``b``
    when ``a`` is a plain matrix, as in the DCT (D @ x with x of shape (B, H, W, C)).
    """
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
    analysis = FlopCountAnalysis(model, x).set_op_handle('aten::matmul', _matmul_flop)
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
    return int(parameter_count(model)[''])
