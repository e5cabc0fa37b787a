"""vHeat as the backbone of torchvision's detection models (Faster / Mask / Keypoint R-CNN, RetinaNet), the way
people without mmcv use a timm backbone: timm's ``features_only`` model under torchvision's FPN.

    backbone = fpn_backbone('vheat_tiny', pretrained=True)
    detector = torchvision.models.detection.FasterRCNN(backbone, num_classes=91)
"""
from collections import OrderedDict
from typing import Dict, Sequence

import timm
import torch
import torch.nn as nn

__all__ = ['VHeatFPN', 'fpn_backbone']


class VHeatFPN(nn.Module):
    """A features-only vHeat and torchvision's FeaturePyramidNetwork (with its max-pooled extra level): maps
    '0'..'3' at strides 4 to 32 and 'pool' at 64, ``out_channels`` each, what torchvision's detectors expect of a
    backbone (an ``out_channels`` attribute, an ordered dict of maps)."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(self.body(x))))


def fpn_backbone(name: str = 'vheat_tiny', pretrained: bool = False, out_channels: int = 256,
                 out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs) -> VHeatFPN:
    """``timm.create_model(name, features_only=True, ...)`` under an FPN; ``kwargs`` go to timm (``img_size``,
    ``pretrained_cfg_overlay=dict(file=...)``, ``drop_path_rate`` ...)."""
    body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices), **kwargs)
    return VHeatFPN(body, out_channels)
