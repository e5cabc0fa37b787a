"""Registers the vHeat backbone in mmseg's MODELS as ``type='vHeat'`` (config: ``custom_imports``)."""
from mmseg.registry import MODELS

from classification.models.mm_backbone import MMvHeat

MODELS.register_module('vHeat', module=MMvHeat)
