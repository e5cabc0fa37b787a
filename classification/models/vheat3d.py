"""vHeat3D: heat conduction over volumes and video, with the 2-D model's modules and weights.

The operator needs one more DCT axis: a block computes
    u(t) = IDCT3D( DCT3D(phi(x)) * exp(-(w_d^2 + w_h^2 + w_w^2))^k ),   w_d = d*pi/D, ...
on a channels-last (B, D, H, W, C) volume, global mixing at O(N^(4/3)) with matrix DCTs for N voxels. Stem and
downsampling are 3-D convolutions with a stride per axis: isotropic for volumes (``patch_size=(4, 4, 4)``,
``downsample_stride=(2, 2, 2)``), or keeping more of the time axis for video (e.g. ``(2, 4, 4)`` and
``(1, 2, 2)``). Everything else (blocks, stages, heads, features API, ``infer_init``) is :class:`vHeat`'s own code.

:func:`inflate_state_dict` builds a vHeat3D checkpoint from a 2-D one (official or ours): every convolution kernel
gets the new axis with its 2-D weights in the centre slice and zeros elsewhere, the frequency embeddings are
repeated along it, every other weight is carried over, so that a constant video (a frame repeated) gives that
frame's 2-D features. ``load_state_dict`` inflates 2-D checkpoints automatically.
"""
import re
from typing import Dict, Final, Sequence, Union

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._helpers import clean_state_dict

from .serialization import find_state_dict
from .vheat import MODEL_ARGS, build_vheat, checkpoint_filter_fn, rename_official_key, resize_map, vHeat

__all__ = ['vHeat3D', 'inflate_state_dict']


class vHeat3D(vHeat):
    """vHeat for (B, C, D, H, W) volumes or clips; the arguments are :class:`vHeat`'s, per axis where spatial.

    Args:
        patch_size: stride of the stem per axis (1, 2 or 4 each), e.g. (4, 4, 4) for volumes, (2, 4, 4) for video.
        downsample_stride: stride of the downsampling between stages per axis, e.g. (2, 2, 2) or (1, 2, 2).
        volume_size: (D, H, W) of the training inputs; sets the size of the frequency embeddings (vHeat's
            ``img_size``, under another name because timm reads ``img_size`` as an image's (H, W)).
        **kwargs: every other :class:`vHeat` argument.
    """

    spatial_dims: Final[int] = 3
    output_fmt = 'NDHWC'  # forward_features returns channels-last volumes

    def __init__(self, patch_size: Union[int, Sequence[int]] = (4, 4, 4),
                 downsample_stride: Union[int, Sequence[int]] = (2, 2, 2),
                 volume_size: Union[int, Sequence[int]] = (64, 64, 64), **kwargs):
        super().__init__(patch_size=patch_size, downsample_stride=downsample_stride, img_size=volume_size, **kwargs)

    def convert_state_dict(self, state_dict: Dict[str, torch.Tensor], freq_embed_resize: str = 'bicubic'
                           ) -> Dict[str, torch.Tensor]:
        """2-D checkpoints inflated (their embeddings resized bicubically), 3-D ones converted as vHeat's (the load
        hook and ``load_pretrained`` use it)."""
        return checkpoint_filter_fn_3d(state_dict, self, freq_embed_resize)


def _is_2d(state_dict: Dict[str, torch.Tensor]) -> bool:
    first = state_dict.get('stem.conv1.weight', state_dict.get('patch_embed.conv1.weight'))
    return first is not None and first.ndim == 4


def checkpoint_filter_fn_3d(state_dict: Dict[str, torch.Tensor], model: vHeat3D, freq_embed_resize: str = 'bicubic'
                            ) -> Dict[str, torch.Tensor]:
    """A vHeat3D checkpoint for ``model``: 2-D checkpoints inflated (:func:`inflate_state_dict`), 3-D ones as
    :func:`checkpoint_filter_fn` converts them."""
    state_dict = clean_state_dict(find_state_dict(state_dict))
    if _is_2d(state_dict):
        return inflate_state_dict(state_dict, model)
    return checkpoint_filter_fn(state_dict, model, freq_embed_resize)


def inflate_state_dict(state_dict: Dict[str, torch.Tensor], model: vHeat3D) -> Dict[str, torch.Tensor]:
    """The weights of a 2-D vHeat (training layout, official or our names) for ``model`` of the same widths and
    depths: 2-D kernels become 3-D kernels whose centre slice along the new axis holds them (zeros elsewhere),
    (H, W, C) frequency embeddings are resized to the model's (bicubically) and repeated along D, every other
    weight is carried over. Keys the model does not have are passed on (so that a strict load names them)."""
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        key = rename_official_key(key)
        if re.search(r'\.mlp\.fc\d\.weight$', key) and value.ndim == 4:
            value = value.flatten(1)
        if key.endswith('.op.k_exp'):
            raise ValueError(f'{key}: the 2-D checkpoint is in inference layout (decay maps folded); inflate a '
                             'training-layout checkpoint, which keeps the frequency embeddings')
        target = own.get(key)
        if target is not None and value.ndim == 4 and target.ndim == 5 and key.endswith('.weight'):
            kernel = value.new_zeros(target.shape)
            kernel[:, :, target.shape[2] // 2] = value
            value = kernel
        elif target is not None and key.endswith('freq_embed') and value.ndim == 3:
            value = resize_map(value, list(target.shape[1:3]))[None].expand(target.shape).clone()
        out[key] = value
    return out


def _cfg(**kwargs) -> Dict:
    # no `input_size`: timm's image configs are (C, H, W); the model's own volume_size default is (64, 64, 64).
    # custom_load: a file given with pretrained_cfg_overlay goes through vHeat.load_pretrained (inflated here).
    return dict(url='', custom_load=True, num_classes=1000, first_conv='stem.conv1', classifier='head.fc',
                license='apache-2.0', **kwargs)


default_cfgs = generate_default_cfgs({f'vheat3d_{size}': _cfg() for size in ('tiny', 'small', 'base')})


def _create_vheat3d(variant: str, pretrained: bool = False, **kwargs) -> vHeat3D:
    model_args = dict(MODEL_ARGS[variant.replace('vheat3d', 'vheat')], **kwargs)
    return build_vheat(vHeat3D, variant, pretrained, checkpoint_filter_fn_3d, **model_args)


@register_model
def vheat3d_tiny(pretrained: bool = False, **kwargs) -> vHeat3D:
    """vHeat3D-T: vHeat-T's widths and depths (dims 96, depths 2, 2, 6, 2), 3-D convolutions."""
    return _create_vheat3d('vheat3d_tiny', pretrained, **kwargs)


@register_model
def vheat3d_small(pretrained: bool = False, **kwargs) -> vHeat3D:
    """vHeat3D-S: vHeat-S's widths and depths (dims 96, depths 2, 2, 18, 2, post-norm, layer scale)."""
    return _create_vheat3d('vheat3d_small', pretrained, **kwargs)


@register_model
def vheat3d_base(pretrained: bool = False, **kwargs) -> vHeat3D:
    """vHeat3D-B: vHeat-B's widths and depths (dims 128, depths 2, 2, 18, 2, post-norm, layer scale)."""
    return _create_vheat3d('vheat3d_base', pretrained, **kwargs)
