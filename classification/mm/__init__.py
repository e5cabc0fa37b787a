"""Everything that imports mmengine, mmdet or mmseg: the backbone adapter, the durable checkpoint hook, weights-only
reading of Runner checkpoints (registered on import), and the Runner of tools/train.py and tools/test.py
(:mod:`.runner`, imported by them alone)."""
from . import checkpoints, hooks  # noqa: F401  (Runner checkpoints weights-only; DurableCheckpointHook registered)
from .backbone import MMvHeat

__all__ = ['MMvHeat']
