"""The Heat Conduction Operator's math, once, and its training path: a backward that keeps only what it needs.

    x = DWConv(x_in);  (u, z) = Linear(x);  h = IDCT(DCT(u) * decay);  out = Linear(LayerNorm(h) * SiLU(z))
    decay = exp(-(w_n^2 + w_m^2) * k),  k = ReLU(Linear(freq_embed))

:func:`gated_heat_conduction` and :func:`conductivity_decay` are this math as plain functional code. Where a
gradient is wanted they run as :class:`GatedHeatConduction` and :class:`ConductivityDecay`: the same operations
forward, a backward written out. For one block autograd keeps eight maps of the block's size (the convolution's
input and output, the spectrum, the norm's input and output, the gate's input and output, and their product) and
two of the decay's (k and the decay); these keep three (the convolution's input, the
spectrum DCT(u) and h), the decay and a mask of k > 0. The depthwise convolution, z = Linear(x), the norm, the
gate and their product are recomputed in backward (a pass over memory each, and one product of the channels);
every DCT product of autograd's backward is done once, here too. The stem keeps its input image alone
(:func:`stem_activations`). Gradients equal autograd's to float32 rounding.

Without a gradient (inference, ``infer_init``, the CPU streaming engine, TorchScript, torch.jit tracing and so
fvcore's FLOP count) the functional code runs, so fx, ONNX and compiled inference see the math as it is. Under
``torch.compile`` it runs too, with or without a gradient: there AOTAutograd's partitioner chooses what to keep
for backward and what to recompute, for the whole graph.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch.utils.checkpoint import checkpoint

from .dct import _frequency_distance_like, dctn, heat_conduction, heat_decay

__all__ = ['gated_heat_conduction', 'conductivity_decay', 'stem_activations', 'depthwise_conv', 'GatedHeatConduction',
           'ConductivityDecay']


def _needs_grad(tensors: List[Optional[torch.Tensor]]) -> bool:
    """Whether the training path runs: a gradient is wanted, outside torch.jit tracing and torch.compile."""
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A depthwise convolution ('same' padding: an odd kernel, stride 1) of a channels-last (B, *spatial, C) tensor,
    as the model's ``dwconv`` computes it (on the channels-first view)."""
    channels_first = x.movedim(-1, 1)
    groups = weight.shape[0]
    if x.ndim == 3:
        out = F.conv1d(channels_first, weight, bias, padding='same', groups=groups)
    elif x.ndim == 4:
        out = F.conv2d(channels_first, weight, bias, padding='same', groups=groups)
    else:
        out = F.conv3d(channels_first, weight, bias, padding='same', groups=groups)
    return out.movedim(1, -1)


def _depthwise_conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, with_bias: bool
                             ) -> List[Optional[torch.Tensor]]:
    """The gradients of :func:`depthwise_conv` (input, weight, bias) from its output's, by autograd's own kernel."""
    channels, ones = weight.shape[0], [1] * (weight.ndim - 2)
    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad.movedim(-1, 1), x.movedim(-1, 1), weight, [channels] if with_bias else None, ones,
        [k // 2 for k in weight.shape[2:]], ones, False, [0] * len(ones), channels, [True, True, with_bias])
    return [grad_x.movedim(1, -1), grad_weight, grad_bias]


@register_notrace_function
def gated_heat_conduction(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                          decay: torch.Tensor,
                          in_weight: torch.Tensor, in_bias: torch.Tensor, norm_weight: torch.Tensor,
                          norm_bias: torch.Tensor, out_weight: torch.Tensor, out_bias: torch.Tensor, eps: float,
                          impl: str = 'matmul') -> torch.Tensor:
    """Linear(LayerNorm(IDCT(DCT(u) * decay)) * SiLU(z)) with (u, z) = Linear(DWConv(x)), on a channels-last
    (B, *spatial, C) ``x`` and a (*spatial, C) ``decay``; ``in_weight`` is (2C, C), its first half giving u."""
    if not torch.jit.is_scripting():
        if _needs_grad([x, conv_weight, conv_bias, decay, in_weight, in_bias, norm_weight, norm_bias, out_weight,
                        out_bias]):
            return _gated_heat_conduction_lean(x, conv_weight, conv_bias, decay, in_weight, in_bias, norm_weight,
                                               norm_bias, out_weight, out_bias, eps, impl)
    x = depthwise_conv(x, conv_weight, conv_bias)
    # the two halves of the input linear as two products: u comes out contiguous for the DCT
    w_u, w_z = in_weight.chunk(2)
    b_u, b_z = in_bias.chunk(2)
    u, z = F.linear(x, w_u, b_u), F.linear(x, w_z, b_z)
    h = heat_conduction(u, decay, impl)
    return F.linear(F.layer_norm(h, h.shape[-1:], norm_weight, norm_bias, eps) * F.silu(z), out_weight, out_bias)


@register_notrace_function
def conductivity_decay(freq_embed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The decay map exp(-(w_n^2 + w_m^2) * k), k = ReLU(Linear(freq_embed)), of a (*spatial, C) embedding."""
    if not torch.jit.is_scripting():
        if _needs_grad([freq_embed, weight, bias]):
            return _conductivity_decay_lean(freq_embed, weight, bias)
    return heat_decay(F.relu(F.linear(freq_embed, weight, bias)))


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int]) -> torch.Tensor:
    if weight.ndim == 4:
        return F.conv2d(x, weight, bias, stride=stride, padding=1)
    return F.conv3d(x, weight, bias, stride=stride, padding=1)


def _stem_activations(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                      norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float, stride: List[int]
                      ) -> torch.Tensor:
    y = _conv(x, conv_weight, conv_bias, stride).movedim(1, -1)
    return F.gelu(F.layer_norm(y, y.shape[-1:], norm_weight, norm_bias, eps))


@register_notrace_function
def stem_activations(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                     norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float, stride: List[int]
                     ) -> torch.Tensor:
    """GELU(LayerNorm(Conv3x3(x))), the stem's half-resolution maps, channels-last, from a (B, C, *spatial) ``x``.

    With a gradient, only ``x`` is kept for backward and the three maps are recomputed there (the convolution has
    three input channels: a small part of a training step), as the peers' stems keep no map at this resolution.
    """
    if not torch.jit.is_scripting():
        if _needs_grad([x, conv_weight, conv_bias, norm_weight, norm_bias]):
            return _stem_activations_recomputed(x, conv_weight, conv_bias, norm_weight, norm_bias, eps, stride)
    return _stem_activations(x, conv_weight, conv_bias, norm_weight, norm_bias, eps, stride)


@torch.jit.unused
def _stem_activations_recomputed(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                                 norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float, stride: List[int]
                                 ) -> torch.Tensor:
    return checkpoint(_stem_activations, x, conv_weight, conv_bias, norm_weight, norm_bias, eps, stride,
                      use_reentrant=False)


@torch.jit.unused
def _gated_heat_conduction_lean(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                                decay: torch.Tensor, in_weight: torch.Tensor, in_bias: torch.Tensor,
                                norm_weight: torch.Tensor, norm_bias: torch.Tensor, out_weight: torch.Tensor,
                                out_bias: torch.Tensor, eps: float, impl: str) -> torch.Tensor:
    return GatedHeatConduction.apply(x, conv_weight, conv_bias, decay, in_weight, in_bias, norm_weight, norm_bias,
                                     out_weight, out_bias, eps, impl)


@torch.jit.unused
def _conductivity_decay_lean(freq_embed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return ConductivityDecay.apply(freq_embed, weight, bias)


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``grad`` summed over the leading (batch) axes that ``like`` was broadcast along, in ``like``'s dtype."""
    return grad.sum(tuple(range(grad.ndim - like.ndim))).to(like.dtype) if grad.ndim > like.ndim else \
        grad.to(like.dtype)


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(weight) of ``F.linear(inputs, weight)`` whose output gradient is ``grad``: grad^T @ inputs."""
    return grad.reshape(-1, grad.shape[-1]).t().mm(inputs.reshape(-1, inputs.shape[-1]))


class GatedHeatConduction(torch.autograd.Function):
    """:func:`gated_heat_conduction` with a backward that saves the input, DCT(u) and h.

    Under autocast the forward's operations are autocast's (products and the convolution in its lower precision,
    the norm in float32); the backward does each product in the precision of its forward, as autograd's backward
    would, with the dtypes written out and autocast switched off.
    """

    @staticmethod
    def forward(ctx, x_in, conv_weight, conv_bias, decay, in_weight, in_bias, norm_weight, norm_bias, out_weight,
                out_bias, eps, impl):
        x = depthwise_conv(x_in, conv_weight, conv_bias)
        w_u, w_z = in_weight.chunk(2)
        b_u, b_z = in_bias.chunk(2)
        u, z = F.linear(x, w_u, b_u), F.linear(x, w_z, b_z)
        spectrum = dctn(u, impl)
        del u
        h = dctn(spectrum * decay, impl, inverse=True)
        gated = F.layer_norm(h, h.shape[-1:], norm_weight, norm_bias, eps) * F.silu(z)
        ctx.save_for_backward(x_in, conv_weight, conv_bias, decay, spectrum, h, in_weight, in_bias, norm_weight,
                              norm_bias, out_weight)
        ctx.eps, ctx.impl, ctx.conv_dtype, ctx.gated_dtype = eps, impl, x.dtype, gated.dtype
        return F.linear(gated, out_weight, out_bias)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return GatedHeatConduction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        x_in, conv_weight, conv_bias, decay, spectrum, h, in_weight, in_bias, norm_weight, norm_bias, out_weight = \
            ctx.saved_tensors
        low = grad_out.dtype  # the products' precision in the forward (autocast's, or the model's)
        # x = DWConv(x_in) and z again
        conv_in, conv_w = x_in.to(ctx.conv_dtype), conv_weight.to(ctx.conv_dtype)
        x = depthwise_conv(conv_in, conv_w, conv_bias.to(ctx.conv_dtype) if conv_bias is not None else None).to(low)
        w_u, w_z = in_weight.to(low).chunk(2)
        b_z = in_bias.chunk(2)[1].to(low)
        z = F.linear(x, w_z, b_z)
        # out = Linear(LayerNorm(h) * SiLU(z)): the norm (with its statistics), the gate and their product again, in
        # the forward's dtypes (the norm in float32, as autocast runs it)
        h32 = h.float()
        normed, mean, rstd = torch.native_layer_norm(h32, h.shape[-1:], norm_weight.float(), norm_bias.float(),
                                                     ctx.eps)
        gate = F.silu(z)
        grad_gated = grad_out.matmul(out_weight.to(low)).to(ctx.gated_dtype)
        grad_out_weight = _weight_grad(grad_out, (normed * gate).to(ctx.gated_dtype).to(low)).to(out_weight.dtype)
        grad_out_bias = _sum_to(grad_out, out_weight[:, 0]).to(out_weight.dtype)
        # gated = LayerNorm(h) * SiLU(z): autograd's own kernels for the two backwards
        grad_z = torch.ops.aten.silu_backward((grad_gated * normed).to(z.dtype), z).to(low)
        del z
        grad_h, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
            (grad_gated * gate).float(), h32, h.shape[-1:], mean, rstd, norm_weight.float(), norm_bias.float(),
            [True, True, True])
        del grad_gated, gate, normed, h32, mean, rstd
        grad_norm_weight, grad_norm_bias = grad_norm_weight.to(norm_weight.dtype), grad_norm_bias.to(norm_bias.dtype)
        # h = IDCT(spectrum * decay): the adjoint of the orthonormal inverse DCT is the DCT
        grad_product = dctn(grad_h.to(h.dtype), ctx.impl).to(torch.promote_types(spectrum.dtype, decay.dtype))
        del grad_h
        grad_decay = _sum_to(grad_product * spectrum, decay)
        grad_u = dctn((grad_product * decay).to(spectrum.dtype), ctx.impl, inverse=True).to(low)
        del grad_product
        # (u, z) = Linear(x), x = DWConv(x_in)
        grad_x = (grad_u.matmul(w_u) + grad_z.matmul(w_z)).to(ctx.conv_dtype)
        grad_x_in, grad_conv_weight, grad_conv_bias = _depthwise_conv_backward(grad_x, conv_in, conv_w,
                                                                               conv_bias is not None)
        grad_in_weight = torch.cat([_weight_grad(grad_u, x), _weight_grad(grad_z, x)])
        grad_in_bias = torch.cat([_sum_to(grad_u, w_u[:, 0]), _sum_to(grad_z, w_z[:, 0])])
        return (grad_x_in.to(x_in.dtype), grad_conv_weight.to(conv_weight.dtype),
                grad_conv_bias.to(conv_bias.dtype) if conv_bias is not None else None, grad_decay,
                grad_in_weight.to(in_weight.dtype),
                grad_in_bias.to(in_weight.dtype), grad_norm_weight, grad_norm_bias, grad_out_weight, grad_out_bias,
                None, None)


class ConductivityDecay(torch.autograd.Function):
    """:func:`conductivity_decay` with a backward that keeps the decay (the heat conduction keeps it anyway) and a
    mask of k > 0, not k."""

    @staticmethod
    def forward(ctx, freq_embed, weight, bias):
        k = F.relu(F.linear(freq_embed, weight, bias))
        decay = heat_decay(k)
        ctx.save_for_backward(freq_embed, weight, decay, k > 0)
        ctx.k_dtype = k.dtype
        return decay

    @staticmethod
    def backward(ctx, grad_decay):
        freq_embed, weight, decay, positive = ctx.saved_tensors
        with torch.autocast(grad_decay.device.type, enabled=False):
            distance = _frequency_distance_like(list(decay.shape[:-1]), decay.float())
            grad_k = (grad_decay.float() * decay.float() * -distance).to(ctx.k_dtype) * positive
            grad_embed = grad_k.matmul(weight.to(ctx.k_dtype)).to(freq_embed.dtype)
            grad_weight = _weight_grad(grad_k, freq_embed.to(ctx.k_dtype)).to(weight.dtype)
            grad_bias = _sum_to(grad_k, weight[:, 0]).to(weight.dtype)
        return grad_embed, grad_weight, grad_bias
