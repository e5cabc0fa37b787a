"""The configs' ``custom_imports``: registers the vHeat backbone in mmdet's MODELS as ``type='vHeat'`` and
``DurableCheckpointHook`` in mmengine's HOOKS, and lets every checkpoint reader (``init_detector``,
``DetInferencer``, the Runner, this project's tools) read Runner checkpoints weights-only
(``classification/mmengine_checkpoints.py``)."""
from mmdet.registry import MODELS

from classification import mmengine_checkpoints, mmengine_hooks  # noqa: F401
from classification.models.mm_backbone import MMvHeat

MODELS.register_module('vHeat', module=MMvHeat)
