"""vHeat: vision backbone built on the Heat Conduction Operator (HCO), the reference implementation.

Image features are heat sources. A block computes
    u(t) = IDCT2D( DCT2D(phi(x)) * exp(-(w_n^2 + w_m^2))^k )
with an orthonormal DCT-II, w_n = n*pi/H, and k = ReLU(Linear(frequency value embedding)) >= 0, one embedding
per stage. ``infer_init()`` folds the fixed k of a trained model into a precomputed decay map (``k_exp``).

Every module has one forward, the official math, whatever the device or the input size; the whole network runs
channels-last (B, H, W, C), so LayerNorms, Linear layers and the DCT matrix products need no layout copies and
convolutions see channels-last NCHW views. The same modules serve volumes and video (B, D, H, W, C) with 3-D
convolutions and a DCT along one more axis (:mod:`.vheat3d`). It traces with torch.fx (the DCT core and the map resizing are FX
leaves), scripts with TorchScript, compiles with ``torch.compile(fullgraph=True)`` and exports to ONNX. Execution
engines that are faster on one kind of machine live elsewhere and are switched on explicitly
(:func:`classification.models.cpu_streaming.enable_cpu_streaming`).

Parameter names are this module's own; official vHeat checkpoints (training and ``infer_init`` layouts)
are converted on load by :func:`checkpoint_filter_fn`, which ``load_state_dict`` applies automatically.
"""
import logging
import re
from typing import Dict, Final, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._helpers import clean_state_dict
from torch.utils.checkpoint import checkpoint

from .dct import DCT_IMPLS, frequency_distance
from .lean_backward import conductivity_decay, gated_heat_conduction, stem_activations
from .serialization import DOWNLOAD_ERRORS, CheckpointDownloadError, download_failure, find_state_dict, load_checkpoint
from .weights import load_weights

__all__ = ['vHeat', 'checkpoint_filter_fn', 'rename_official_key']

_logger = logging.getLogger(__name__)

FREQ_EMBED_RESIZE = ('bicubic', 'zero')


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@register_notrace_function
def resize_map(t: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Resize an (*spatial, C) map (frequency embedding or decay) to ``size``: linearly in 1-D, bicubically in 2-D,
    trilinearly in 3-D; as it is if it fits."""
    if t.shape[:-1] == size:
        return t
    mode = 'linear' if len(size) == 1 else 'bicubic' if len(size) == 2 else 'trilinear'
    resized = F.interpolate(t.movedim(-1, 0)[None].float(), size=size, mode=mode, align_corners=False)
    return resized[0].movedim(0, -1).to(t.dtype)


def resize_freq_embed(embed: torch.Tensor, size: Sequence[int], mode: str = 'bicubic') -> torch.Tensor:
    """A stage's (*spatial, C) frequency embedding at another resolution.

    ``bicubic`` resizes it (trilinearly in 3-D; what any input size does on the fly). ``zero`` is the official
    downstream initialisation (``interpolate4downstream.py``): the embedding keeps its values at the low frequencies
    (the first ones along each axis) and the new high frequencies start at zero; a smaller target keeps the start.
    """
    if mode == 'bicubic':
        return resize_map(embed, list(size))
    if mode != 'zero':
        raise ValueError(f'frequency embedding resize mode must be one of {FREQ_EMBED_RESIZE}, got {mode!r}')
    out = embed.new_zeros(tuple(size) + embed.shape[-1:])
    kept = tuple(slice(0, min(target, source)) for target, source in zip(size, embed.shape[:-1]))
    out[kept] = embed[kept]
    return out


@register_notrace_function
def check_image_batch(x: torch.Tensor, spatial_dims: int = 2) -> torch.Tensor:
    """``x`` itself if it is a (B, C, H, W) batch (or (B, C, D, H, W) in 3-D); a ValueError naming its shape
    otherwise."""
    if x.ndim != spatial_dims + 2:
        layout = '(B, C, H, W) image' if spatial_dims == 2 else '(B, C, D, H, W) volume'
        raise ValueError(f'vHeat expects a {layout} batch, got shape {list(x.shape)}')
    return x


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """View a channels-last (B, *spatial, C) tensor as (B, C, *spatial) (channels-last memory, no copy)."""
    return x.movedim(-1, 1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """View a (B, C, *spatial) tensor as channels-last (B, *spatial, C); free when its memory is channels-last."""
    return x.movedim(1, -1)


def _per_axis(value: Union[int, Sequence[int]], spatial_dims: int, name: str) -> Tuple[int, ...]:
    values = (value,) * spatial_dims if isinstance(value, int) else tuple(value)
    if len(values) != spatial_dims:
        raise ValueError(f'{name} needs one value per spatial axis ({spatial_dims}), got {value!r}')
    return values


class Stem(nn.Module):
    """Two 3x3 convolutions (stride 2 each: stride 4) with LayerNorms and a GELU, output channels-last.

    ``stride`` gives the total stride per spatial axis (1, 2 or 4; its length, 2 or 3, the dimensionality).
    """

    def __init__(self, in_chans: int, out_chans: int, stride: Sequence[int] = (4, 4)):
        super().__init__()
        conv = _CONV[len(stride)]
        first = tuple(min(s, 2) for s in stride)
        self.conv1 = conv(in_chans, out_chans // 2, kernel_size=3, stride=first, padding=1)
        self.norm1 = nn.LayerNorm(out_chans // 2, eps=1e-6)
        self.conv2 = conv(out_chans // 2, out_chans, kernel_size=3, stride=tuple(s // f for s, f in zip(stride, first)),
                          padding=1)
        self.norm2 = nn.LayerNorm(out_chans, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_activations(x, self.conv1.weight, self.conv1.bias, self.norm1.weight, self.norm1.bias, self.norm1.eps,
                             list(self.conv1.stride))
        return self.norm2(_channels_last(self.conv2(_channels_first(x))))


class Downsample(nn.Module):
    """3x3 convolution (stride 2 per axis unless ``stride`` says otherwise; no bias) and LayerNorm between stages,
    channels-last in and out."""

    def __init__(self, in_dim: int, out_dim: int, stride: Sequence[int] = (2, 2)):
        super().__init__()
        self.conv = _CONV[len(stride)](in_dim, out_dim, kernel_size=3, stride=tuple(stride), padding=1, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_channels_last(self.conv(_channels_first(x))))


class HeatConduction(nn.Module):
    """The Heat Conduction Operator on a channels-last (B, H, W, C) map, (B, D, H, W, C) volume or (B, L, C) sequence.

    phi(x) = Linear(DWConv3x3(x)) gives the heat source u0 and a gate z; the output is
    Linear(LayerNorm(IDCT(DCT(u0) * decay)) * SiLU(z)), the DCTs along every spatial axis. In training layout the
    decay is exp(-(w_n^2 + w_m^2 [+ w_d^2]) * k) with k = ReLU(to_k(freq_embed)); in inference layout it is the
    stored ``k_exp``. ``res``: the spatial size of the frequency embedding (its length, 1, 2 or 3, the dimensionality).
    """

    def __init__(self, dim: int, res: Sequence[int], infer_mode: bool = False, dct_impl: str = 'matmul'):
        super().__init__()
        self.spatial_dims = len(res)
        self.dwconv = _CONV[len(res)](dim, dim, kernel_size=3, padding=1, groups=dim)
        self.linear = nn.Linear(dim, 2 * dim)
        self.out_norm = nn.LayerNorm(dim)
        self.out_linear = nn.Linear(dim, dim)
        self.dct_impl = dct_impl
        if infer_mode:
            distance = frequency_distance(tuple(res), torch.device('cpu'), torch.float32)
            self.k_exp = nn.Parameter(torch.exp(-distance).expand(*res, dim).clone(), requires_grad=False)
        else:
            self.to_k = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())

    @property
    def infer_mode(self) -> bool:
        return hasattr(self, 'k_exp')

    def decay(self, size: List[int], freq_embed: Optional[torch.Tensor]) -> torch.Tensor:
        """The (*size, C) decay map exp(-(w_n^2 + w_m^2 [+ w_d^2]))^k at feature size ``size``; ``freq_embed`` is
        the stage's embedding at that size (training layout)."""
        if hasattr(self, 'k_exp'):
            return resize_map(self.k_exp, size)
        if freq_embed is None:
            raise ValueError('HeatConduction in training layout needs the stage frequency embedding')
        return conductivity_decay(freq_embed, self.to_k[0].weight, self.to_k[0].bias)

    @torch.no_grad()
    def fold_decay(self, freq_embed: torch.Tensor) -> None:
        """Switch to inference layout: store the decay of ``freq_embed`` as ``k_exp`` and drop ``to_k``."""
        self.k_exp = nn.Parameter(self.decay(list(freq_embed.shape[:-1]), freq_embed), requires_grad=False)
        del self.to_k

    def forward(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
        size = [x.shape[axis + 1] for axis in range(self.spatial_dims)]
        return gated_heat_conduction(x, self.dwconv.weight, self.dwconv.bias, self.decay(size, freq_embed),
                                     self.linear.weight, self.linear.bias, self.out_norm.weight, self.out_norm.bias,
                                     self.out_linear.weight, self.out_linear.bias, self.out_norm.eps, self.dct_impl)


class HeatBlock(nn.Module):
    """HCO and MLP residual branches, pre-norm or post-norm, with optional layer scale and drop path."""

    def __init__(self, dim: int, res: Sequence[int], drop_path: float = 0., mlp_ratio: float = 4.0,
                 post_norm: bool = True, layer_scale: Optional[float] = None, infer_mode: bool = False,
                 dct_impl: str = 'matmul'):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim)
        self.op = HeatConduction(dim, res, infer_mode=infer_mode, dct_impl=dct_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale is not None else None
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale is not None else None

    def forward(self, x: torch.Tensor, freq_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
        # post-norm normalises each branch's output, pre-norm its input
        heat = self.norm1(self.op(x, freq_embed)) if self.post_norm else self.op(self.norm1(x), freq_embed)
        x = x + self.drop_path(heat if self.gamma1 is None else heat * self.gamma1)
        mlp = self.norm2(self.mlp(x)) if self.post_norm else self.mlp(self.norm2(x))
        return x + self.drop_path(mlp if self.gamma2 is None else mlp * self.gamma2)


class HeatStage(nn.Module):
    """Optional downsampling, then HeatBlocks that share this stage's frequency value embedding (of spatial size
    ``res``)."""

    def __init__(self, in_dim: int, dim: int, depth: int, res: Sequence[int], drop_path: Sequence[float],
                 infer_mode: bool = False, use_checkpoint: bool = False, downsample_stride: Sequence[int] = (2, 2),
                 **block_kwargs):
        super().__init__()
        self.spatial_dims = len(res)
        self.downsample = Downsample(in_dim, dim, downsample_stride) if in_dim != dim else nn.Identity()
        self.grad_checkpointing = use_checkpoint
        if not infer_mode:
            self.freq_embed = nn.Parameter(torch.zeros(*res, dim))
            trunc_normal_(self.freq_embed, std=.02)
        self.blocks = nn.ModuleList(
            HeatBlock(dim, res, drop_path=drop_path[i], infer_mode=infer_mode, **block_kwargs) for i in range(depth))

    @torch.no_grad()
    def fold_decay(self) -> None:
        for block in self.blocks:
            block.op.fold_decay(self.freq_embed)
        del self.freq_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        freq_embed: Optional[torch.Tensor] = None
        if hasattr(self, 'freq_embed'):  # training layout: the embedding at this feature size
            freq_embed = resize_map(self.freq_embed, [x.shape[axis + 1] for axis in range(self.spatial_dims)])
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, freq_embed, use_reentrant=False)
            else:
                x = block(x, freq_embed)
        return x


class ClassifierHead(nn.Module):
    """LayerNorm, global average pooling over the spatial axes ('avg', or '' for none), dropout and the linear
    classifier."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float = 0., global_pool: str = 'avg'):
        super().__init__()
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.norm = nn.LayerNorm(dim)
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x)
        if self.global_pool == 'avg':
            x = x.flatten(1, -2).mean(1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class vHeat(nn.Module):
    """vHeat classifier / backbone. Arguments follow the official constructor.

    Args:
        patch_size: stride of the stem, 4 (two stride-2 convolutions); per axis (1, 2 or 4 each) in 3-D.
        in_chans: input image channels.
        num_classes: classifier outputs (0 for no classifier).
        depths: HeatBlocks per stage.
        dims: channels of the first stage (doubled per stage), or the four stage widths.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        post_norm: normalise branch outputs (post-norm) instead of branch inputs (pre-norm).
        layer_scale: initial value of per-channel branch scales, or None for none.
        use_checkpoint: gradient checkpointing per block (saves memory in training).
        mlp_ratio: hidden width of the MLP relative to the block width.
        img_size: training resolution; sets the size of the frequency embeddings (img_size / 4 / 2^i).
        infer_mode: build the inference layout (precomputed decay ``k_exp``, no frequency embeddings).
        drop_rate: dropout before the classifier.
        dct_impl: 'matmul' or 'fft' (see :mod:`classification.models.dct`).
        global_pool: 'avg', or '' to keep the (normalised) final map.
        downsample_stride: stride of the downsampling between stages, 2; per axis in 3-D.
    """

    spatial_dims: Final[int] = 2      # vHeat3D: 3
    output_fmt = 'NHWC'   # forward_features returns channels-last maps

    def __init__(self, patch_size: Union[int, Sequence[int]] = 4, in_chans: int = 3, num_classes: int = 1000,
                 depths: Sequence[int] = (2, 2, 9, 2), dims: Union[int, Sequence[int]] = 96,
                 drop_path_rate: float = 0.2, post_norm: bool = True, layer_scale: Optional[float] = None,
                 use_checkpoint: bool = False, mlp_ratio: float = 4.0, img_size: Union[int, Sequence[int]] = 224,
                 infer_mode: bool = False, drop_rate: float = 0., dct_impl: str = 'matmul',
                 global_pool: str = 'avg', downsample_stride: Union[int, Sequence[int]] = 2):
        super().__init__()
        patch = _per_axis(patch_size, self.spatial_dims, 'patch_size')
        if any(p not in (1, 2, 4) for p in patch) or (self.spatial_dims == 2 and patch != (4, 4)):
            raise ValueError(f'vHeat has a convolutional stem of two stride-2 convolutions: patch_size must be 4 '
                             f'(1, 2 or 4 per axis in 3-D), got {patch_size}')
        stride = _per_axis(downsample_stride, self.spatial_dims, 'downsample_stride')
        if dct_impl not in DCT_IMPLS:
            raise ValueError(f'dct_impl must be one of {DCT_IMPLS}, got {dct_impl!r}')
        depths = list(depths)
        dims = [int(dims * 2 ** i) for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths):
            raise ValueError(f'dims {dims} and depths {depths} must have the same length')
        self.num_classes = num_classes
        self.depths, self.dims = depths, dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.img_size = img_size
        self.infer_mode = infer_mode
        size = _per_axis(img_size, self.spatial_dims, 'img_size')
        strides = [tuple(p * s ** i for p, s in zip(patch, stride)) for i in range(len(depths))]
        if any(n < s for n, s in zip(size, strides[-1])):
            raise ValueError(f'img_size {img_size} is smaller than the stride {strides[-1]} of the last stage: its '
                             'frequency embedding would be empty')
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()

        self.stem = Stem(in_chans, dims[0], patch)
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            self.stages.append(HeatStage(
                dims[max(i - 1, 0)], dims[i], depth, [n // s for n, s in zip(size, strides[i])],
                dpr[sum(depths[:i]):sum(depths[:i + 1])], infer_mode=infer_mode, use_checkpoint=use_checkpoint,
                downsample_stride=stride, mlp_ratio=mlp_ratio, post_norm=post_norm, layer_scale=layer_scale,
                dct_impl=dct_impl))
            info = dict(num_chs=dims[i], reduction=strides[i][-1], module=f'stages.{i}')
            self.feature_info.append(info if self.spatial_dims == 2 else dict(info, stride=strides[i]))
        self.head = ClassifierHead(dims[-1], num_classes, drop_rate, global_pool)
        self.apply(self._init_weights)
        self._register_load_state_dict_pre_hook(self._convert_on_load)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict: Dict[str, torch.Tensor], freq_embed_resize: str = 'bicubic'
                           ) -> Dict[str, torch.Tensor]:
        """A state dict (official names or ours, either layout) in this model's names and layout."""
        return checkpoint_filter_fn(state_dict, self, freq_embed_resize)

    def _convert_on_load(self, state_dict, prefix, *args) -> None:
        """Load hook: official checkpoints (and training-layout weights into an inference-layout model)."""
        own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
        state_dict.update({prefix + k: v for k, v in self.convert_state_dict(own).items()})

    def load_pretrained(self, path: str, weights: Optional[str] = None) -> None:
        """Load a classification checkpoint: what timm's ``pretrained=True`` (the release URL, through torch's hub
        cache) and ``pretrained_cfg_overlay=dict(file=...)`` both call.

        The file (official trainer layout, ours, or a bare state dict; ``module.`` prefixes of DDP saves removed) is
        read weights-only. ``weights`` picks the state dict: ``'model'`` or ``'model_ema'``; by default the
        pretrained tag's (``model`` for ``*.in1k``, ``model_ema`` for ``*.in1k_ema``). As timm does for its own
        checkpoints, a classifier of another size (``num_classes``) starts as initialised and the stem's first
        convolution is adapted to another ``in_chans``; any other key that does not fit is an
        IncompatibleCheckpointError naming it.
        """
        weights = weights or PRETRAINED_WEIGHTS.get((getattr(self, 'pretrained_cfg', None) or {}).get('tag'), 'model')
        loaded = load_weights(self, clean_state_dict(find_state_dict(load_checkpoint(path), weights, path)), path,
                              f'{type(self).__name__} (another architecture or size?)', adapt_stem='stem.conv1.weight',
                              skip_unfit=('head.fc.weight', 'head.fc.bias'))
        _logger.info('Loaded %s of %s%s', weights, path,
                     f' (classifier of {self.num_classes} classes newly initialised)' if loaded.skipped else '')

    @torch.no_grad()
    def infer_init(self) -> None:
        """Re-parameterise for inference: fold each block's decay into ``k_exp``; outputs do not change."""
        if self.infer_mode:
            return
        for stage in self.stages:
            stage.fold_decay()
        self.infer_mode = True

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond timm's default (1-D parameters): the official recipe decays the frequency embeddings."""
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else [
            (r'^stages\.(\d+)\.downsample', (0,)), (r'^stages\.(\d+)\.freq_embed', (0,)),
            (r'^stages\.(\d+)\.blocks\.(\d+)', None)])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.head.global_pool = global_pool
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False):
        """Stage outputs (strides 4, 8, 16, 32) channels first (NCHW) or last (NHWC), timm's features API.

        ``indices``: stage indices, or an int n for the last n stages. ``norm`` applies the head's
        LayerNorm to the returned final features.
        """
        if output_fmt not in ('NCHW', 'NHWC', 'NCDHW', 'NDHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC' (channels first or last; 'NCDHW' or 'NDHWC' "
                             f"alike), got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(check_image_batch(x, self.spatial_dims))
        stages = self.stages if not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                feat = self.head.norm(x) if norm and i == len(self.stages) - 1 else x
                intermediates.append(_channels_first(feat) if output_fmt in ('NCHW', 'NCDHW') else feat)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last wanted one (and the head), for features-only use."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0)
            if prune_norm:
                self.head.norm = nn.Identity()
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-stage features, channels-last (B, H/32, W/32, C)."""
        x = self.stem(check_image_batch(x, self.spatial_dims))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_OFFICIAL_RENAMES = [
    (r'^patch_embed\.norm(\d)\.1\.', r'stem.norm\1.'),
    (r'^patch_embed\.', 'stem.'),
    (r'^freq_embed\.(\d+)$', r'stages.\1.freq_embed'),
    (r'^classifier\.0\.', 'head.norm.'),
    (r'^classifier\.3\.', 'head.fc.'),
    (r'^layers\.(\d+)\.(\d+)\.([a-z])', r'stages.\1.blocks.\2.\3'),
]
_OFFICIAL_DOWNSAMPLE = re.compile(r'^layers\.(\d+)\.\d+\.([01])\.(.+)$')


def rename_official_key(key: str) -> str:
    """Map one official vHeat key (``layers.i.j...``, ``patch_embed``, ``classifier``) to this module's name."""
    match = _OFFICIAL_DOWNSAMPLE.match(key)
    if match:  # the official stage i ends with the downsampling that starts our stage i + 1
        stage, part, rest = match.groups()
        return f'stages.{int(stage) + 1}.downsample.{"conv" if part == "0" else "norm"}.{rest}'
    for pattern, repl in _OFFICIAL_RENAMES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: vHeat,
                         freq_embed_resize: str = 'bicubic') -> Dict[str, torch.Tensor]:
    """Convert a vHeat state dict (official or ours, training or inference layout) for ``model``.

    - ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are removed;
    - official names are mapped to ours, and 1x1-conv MLP weights become Linear weights;
    - frequency embeddings of another resolution are resized to the model's (``freq_embed_resize``, see
      :func:`resize_freq_embed`);
    - a training-layout checkpoint loaded into an inference-layout model gets its decay folded into ``k_exp``.
    """
    state_dict = find_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for key, value in clean_state_dict(state_dict).items():
        key = rename_official_key(key)
        if re.search(r'\.mlp\.fc\d\.weight$', key) and value.ndim == 4:
            value = value.flatten(1)
        if key.endswith('.op.k_exp'):
            if not model.infer_mode:
                raise ValueError(f'{key}: the checkpoint is in inference layout (precomputed decay); build the '
                                 'model with infer_mode=True to load it')
            if key in own and value.shape != own[key].shape:
                value = resize_map(value, list(own[key].shape[:-1]))
        out[key] = value
    for i, stage in enumerate(model.stages):
        key = f'stages.{i}.freq_embed'
        if key in out and hasattr(stage, 'freq_embed') and out[key].shape != stage.freq_embed.shape:
            _logger.info('Resizing %s from %s to %s (%s)', key, tuple(out[key].shape), tuple(stage.freq_embed.shape),
                         freq_embed_resize)
            out[key] = resize_freq_embed(out[key], tuple(stage.freq_embed.shape[:-1]), freq_embed_resize)
        if key in out and model.infer_mode:
            _fold_decay_into_state_dict(out, i, stage)
    return out


def _fold_decay_into_state_dict(sd: Dict[str, torch.Tensor], index: int, stage: HeatStage) -> None:
    """Replace stage ``index``'s frequency embedding and k-projections in ``sd`` by each block's ``k_exp``."""
    res = list(stage.blocks[0].op.k_exp.shape[:-1])
    freq_embed = resize_map(sd.pop(f'stages.{index}.freq_embed'), res)
    dist = frequency_distance(tuple(res), freq_embed.device, freq_embed.dtype)
    for j in range(len(stage.blocks)):
        prefix = f'stages.{index}.blocks.{j}.op.'
        weight, bias = sd.pop(prefix + 'to_k.0.weight', None), sd.pop(prefix + 'to_k.0.bias', None)
        if weight is None or bias is None:
            raise KeyError(f'{prefix}to_k.0.weight/bias missing: cannot fold the training-layout decay of block '
                           f'{index}.{j} into k_exp')
        sd[prefix + 'k_exp'] = torch.exp(-dist * F.relu(F.linear(freq_embed, weight, bias)))


# The official release (MzeroMiko/vHeat, release `vheatcls`): training checkpoints holding both the weights
# (`model`, what the official README's evaluation command evaluates, `--model_ema False`) and their EMA.
RELEASE_URL = 'https://github.com/MzeroMiko/vHeat/releases/download/'
PRETRAINED_WEIGHTS = {'in1k': 'model', 'in1k_ema': 'model_ema'}


def _cfg(url: str = '', **kwargs) -> Dict:
    # custom_load: timm hands the file (or the hub-cache copy of the URL) to vHeat.load_pretrained, so the file and
    # the URL path read the same weights of the official training checkpoint
    return dict(url=url, custom_load=bool(url), num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
                crop_pct=0.875, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                first_conv='stem.conv1', classifier='head.fc', license='apache-2.0', paper_ids='arXiv:2405.16555',
                paper_name='vHeat: Building Vision Models upon Heat Conduction',
                origin_url='https://github.com/MzeroMiko/vHeat', **kwargs)


MODEL_ARGS = {
    'vheat_tiny': dict(depths=(2, 2, 6, 2), dims=96, post_norm=False, drop_path_rate=0.1),
    'vheat_small': dict(depths=(2, 2, 18, 2), dims=96, post_norm=True, layer_scale=1e-5, drop_path_rate=0.3),
    'vheat_base': dict(depths=(2, 2, 18, 2), dims=128, post_norm=True, layer_scale=1e-5, drop_path_rate=0.5),
}
default_cfgs = generate_default_cfgs({
    f'{name}.{tag}': _cfg(RELEASE_URL + f'vheatcls/vHeat_{name.split("_")[1]}.pth',
                          notes=(f'the official checkpoint\'s {weights!r} weights',))
    for name in MODEL_ARGS for tag, weights in PRETRAINED_WEIGHTS.items()})


def build_vheat(model_cls, variant: str, pretrained: bool, filter_fn, **kwargs):
    """timm's ``build_model_with_cfg``; a release URL that cannot be downloaded is one line naming the URL and the
    hub cache file to put it in by hand.

    A file given as ``pretrained_cfg_overlay=dict(file=...)`` is read by ``load_pretrained`` as the URL's copy is
    (timm would otherwise read it with its generic loader, which prefers ``model_ema``): the same file gives the
    same weights either way.
    """
    overlay = kwargs.get('pretrained_cfg_overlay')
    if overlay and overlay.get('file') and 'custom_load' not in overlay:
        kwargs['pretrained_cfg_overlay'] = dict(overlay, custom_load=True)
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn,
                                    feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)), **kwargs)
    except DOWNLOAD_ERRORS as e:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not pretrained or cfg.file or not cfg.url:
            raise
        raise CheckpointDownloadError(download_failure(cfg.url, e)) from None


def _create_vheat(variant: str, pretrained: bool = False, **kwargs) -> vHeat:
    return build_vheat(vHeat, variant, pretrained, checkpoint_filter_fn, **dict(MODEL_ARGS[variant], **kwargs))


@register_model
def vheat_tiny(pretrained: bool = False, **kwargs) -> vHeat:
    """vHeat-T: 29.56M parameters, 4.59 GFLOPs at 224 (inference layout)."""
    return _create_vheat('vheat_tiny', pretrained, **kwargs)


@register_model
def vheat_small(pretrained: bool = False, **kwargs) -> vHeat:
    """vHeat-S: 50.05M parameters, 8.48 GFLOPs at 224 (inference layout)."""
    return _create_vheat('vheat_small', pretrained, **kwargs)


@register_model
def vheat_base(pretrained: bool = False, **kwargs) -> vHeat:
    """vHeat-B: 87.50M parameters, 14.92 GFLOPs at 224 (inference layout)."""
    return _create_vheat('vheat_base', pretrained, **kwargs)
