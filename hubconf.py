"""torch.hub entry points (timm's pattern): ``torch.hub.load('<owner>/<repo>', 'vheat_tiny', pretrained=True)``.

Each entry is the timm model function: ``pretrained=True`` reads the official release checkpoint through torch's
hub cache (its ``model`` weights; ``pretrained_cfg='in1k_ema'`` for its EMA weights), and every other keyword is the
model's (``num_classes``, ``features_only``, ``img_size``, ...).
"""
dependencies = ['torch', 'timm']

from classification.models.vheat import vheat_base, vheat_small, vheat_tiny  # noqa: E402,F401
from classification.models.vheat3d import vheat3d_base, vheat3d_small, vheat3d_tiny  # noqa: E402,F401
