"""Build a vHeat model from the trainer's yacs config."""
from .vheat import vHeat


def build_model(config, infer_mode: bool = False) -> vHeat:
    """vHeat from ``MODEL.VHEAT.*``, ``MODEL.NUM_CLASSES``, ``MODEL.DROP_PATH_RATE`` and ``DATA.IMG_SIZE``."""
    model_type = config.MODEL.TYPE
    if model_type != 'vHeat':
        raise ValueError(f"MODEL.TYPE must be 'vHeat', got {model_type!r}")
    v = config.MODEL.VHEAT
    return vHeat(
        patch_size=v.PATCH_SIZE, in_chans=v.IN_CHANS, num_classes=config.MODEL.NUM_CLASSES, depths=list(v.DEPTHS),
        dims=v.EMBED_DIM, drop_path_rate=config.MODEL.DROP_PATH_RATE, post_norm=v.POST_NORM,
        layer_scale=v.LAYER_SCALE, use_checkpoint=config.TRAIN.USE_CHECKPOINT, mlp_ratio=v.MLP_RATIO,
        img_size=config.DATA.IMG_SIZE, infer_mode=infer_mode, drop_rate=config.MODEL.DROP_RATE,
        dct_impl=v.DCT_IMPL)
