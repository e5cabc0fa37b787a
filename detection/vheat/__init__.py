"""The configs' ``custom_imports``: registers the vHeat backbone in mmdet's MODELS as ``type='vHeat'`` and
``DurableCheckpointHook`` in mmengine's HOOKS, and lets every checkpoint reader (``init_detector``,
``DetInferencer``, the Runner, this project's tools) read Runner checkpoints weights-only
(``classification/mm/checkpoints.py``)."""
from mmdet.registry import MODELS

from classification.mm import checkpoints, hooks  # noqa: F401  (weights-only Runner checkpoints; the hook)
from classification.mm.backbone import MMvHeat

MODELS.register_module('vHeat', module=MMvHeat)
