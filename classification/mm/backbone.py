"""mmengine adapter for :class:`vHeatBackbone`, registered by ``detection/vheat`` and ``segmentation/vheat``.

Kept out of ``classification/models/__init__`` so classification does not need mmengine.
"""
from typing import Optional

from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from classification.models.backbone import vHeatBackbone


class MMvHeat(vHeatBackbone, BaseModule):
    """vHeatBackbone as an mmengine BaseModule; parameter names stay those of the classifier.

    ``init_cfg=dict(type='Pretrained', checkpoint=path)`` loads an official-format or our own classification
    checkpoint with :meth:`vHeatBackbone.load_pretrained` (mmengine's loader would not rename official keys, and
    would only log the keys of a checkpoint that does not fit: this refuses it).
    """

    def __init__(self, init_cfg: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)  # vHeat -> BaseModule.__init__(init_cfg=None) -> nn.Module
        self.init_cfg = init_cfg

    def init_weights(self) -> None:
        if self.init_cfg and self.init_cfg.get('type') == 'Pretrained':
            logger = MMLogger.get_current_instance()
            result = self.load_pretrained(self.init_cfg['checkpoint'])
            logger.info(f'vHeat pretrained {self.init_cfg["checkpoint"]}: newly initialised {result.missing_keys}')
            self._is_init = True
        else:
            super().init_weights()
