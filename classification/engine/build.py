"""Build the trainer's model from its yacs config: vHeat, or any timm model trained with the same recipe."""
import timm
import torch.nn as nn

from classification.models import vHeat


def _plain(node) -> dict:
    """A yacs node as nested plain dicts (timm's keyword arguments)."""
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in node.items()}


def build_model(config, infer_mode: bool = False) -> nn.Module:
    """``MODEL.TYPE`` vHeat: from ``MODEL.VHEAT.*``, ``MODEL.NUM_CLASSES``, ``MODEL.DROP_PATH_RATE`` and
    ``DATA.IMG_SIZE``. ``MODEL.TYPE`` timm: ``timm.create_model(MODEL.TIMM.NAME, **MODEL.TIMM.KWARGS)`` with the
    same classes and drop rates, and ``img_size`` for the models whose input size is fixed (ViT, DeiT, Swin)."""
    if config.MODEL.TYPE == 'timm':
        kwargs = _plain(config.MODEL.TIMM.KWARGS)
        if config.MODEL.DROP_PATH_RATE > 0:
            kwargs.setdefault('drop_path_rate', config.MODEL.DROP_PATH_RATE)
        if config.MODEL.DROP_RATE > 0:
            kwargs.setdefault('drop_rate', config.MODEL.DROP_RATE)
        pretrained_cfg = timm.models.get_pretrained_cfg(config.MODEL.TIMM.NAME)
        if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
            kwargs.setdefault('img_size', config.DATA.IMG_SIZE)
        return timm.create_model(config.MODEL.TIMM.NAME, num_classes=config.MODEL.NUM_CLASSES, **kwargs)
    v = config.MODEL.VHEAT
    return vHeat(
        patch_size=v.PATCH_SIZE, in_chans=v.IN_CHANS, num_classes=config.MODEL.NUM_CLASSES, depths=list(v.DEPTHS),
        dims=v.EMBED_DIM, drop_path_rate=config.MODEL.DROP_PATH_RATE, post_norm=v.POST_NORM,
        layer_scale=v.LAYER_SCALE, use_checkpoint=config.TRAIN.USE_CHECKPOINT, mlp_ratio=v.MLP_RATIO,
        img_size=config.DATA.IMG_SIZE, infer_mode=infer_mode, drop_rate=config.MODEL.DROP_RATE,
        dct_impl=v.DCT_IMPL)
