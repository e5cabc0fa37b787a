"""vHeat as a dense-prediction backbone: the one place detection and segmentation share.

The mmdet/mmseg adapters only add registration and ``init_cfg`` handling (``classification/mm/backbone.py``).
"""
import logging
import re
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .serialization import find_state_dict, load_checkpoint
from .vheat import FREQ_EMBED_RESIZE, checkpoint_filter_fn, vHeat
from .weights import load_weights

_logger = logging.getLogger(__name__)
_OFFICIAL_OUT_NORM = re.compile(r'^outnorm(\d+)\.')  # the official mmdet/mmseg wrapper's (MMDET_VHEAT) output norms


class vHeatBackbone(vHeat):
    """vHeat returning normalised NCHW stage outputs (strides 4, 8, 16, 32) instead of logits.

    Args:
        out_indices: stages whose outputs are returned; later stages are dropped.
        frozen_stages: -1 trains everything; 0 freezes the stem; i > 0 also freezes stages 0..i-1
            (kept in eval mode so their dropout/drop path stay off).
        freq_embed_resize: how ``load_pretrained`` brings pretrained frequency embeddings to ``img_size``:
            'zero' (the official downstream initialisation: zero-padded) or 'bicubic'.
        **kwargs: vHeat arguments (``num_classes`` is forced to 0: no classifier). ``img_size`` sets the
            frequency-embedding resolution that pretrained weights are resized to; any input size runs.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 freq_embed_resize: str = 'zero', **kwargs):
        if freq_embed_resize not in FREQ_EMBED_RESIZE:
            raise ValueError(f'freq_embed_resize must be one of {FREQ_EMBED_RESIZE}, got {freq_embed_resize!r}')
        kwargs['num_classes'] = 0
        super().__init__(**kwargs)
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.freq_embed_resize = freq_embed_resize
        self.prune_intermediate_layers(list(self.out_indices), prune_head=True)
        del self.head  # the head's LayerNorm only serves the classifier; each output has its own norm
        self.out_norms = nn.ModuleList(
            nn.LayerNorm(self.dims[i]) if i in self.out_indices else nn.Identity() for i in range(len(self.stages)))
        self._freeze_stages()

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem] + list(self.stages[:self.frozen_stages])

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'vHeatBackbone':
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = self.forward_intermediates(x, indices=list(self.out_indices), output_fmt='NHWC',
                                           intermediates_only=True)
        # NCHW views of channels-last memory: convolutions downstream take them without a copy
        return [self.out_norms[i](f).permute(0, 3, 1, 2) for i, f in zip(sorted(self.out_indices), feats)]

    def convert_state_dict(self, state_dict: Dict[str, torch.Tensor], freq_embed_resize: Optional[str] = None
                           ) -> Dict[str, torch.Tensor]:
        """Backbone weights in this module's names: the classifier's conversions (official names, frequency
        embeddings brought to ``img_size`` by ``freq_embed_resize``, by default the backbone's) and the official
        downstream wrapper's output norms (``outnorm{i}``) as ``out_norms.{i}``."""
        renamed = {_OFFICIAL_OUT_NORM.sub(r'out_norms.\1.', k): v for k, v in state_dict.items()}
        return checkpoint_filter_fn(renamed, self, freq_embed_resize or self.freq_embed_resize)

    def load_pretrained(self, path: str, weights: str = 'model') -> nn.modules.module._IncompatibleKeys:
        """Load a classification checkpoint (official or ours; ``weights``: its 'model' or 'model_ema'), or the
        backbone of a detection/segmentation checkpoint (official or ours, its ``backbone.*`` weights): classifier
        dropped, frequency embeddings brought to this model's ``img_size`` (``freq_embed_resize``). Only the output
        norms (which a classifier lacks) and the stages after the last output may differ; anything else is an
        IncompatibleCheckpointError naming the keys."""
        state_dict = find_state_dict(load_checkpoint(path), weights, path)
        if any(k.startswith('backbone.') for k in state_dict):
            state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
        loaded = load_weights(self, state_dict, path, 'the vHeat backbone (another architecture or size?)',
                              skip_unfit=('head.',), allowed_missing=('out_norms.',),
                              pruned=tuple(f'stages.{i}.' for i in range(len(self.stages), len(self.depths))))
        _logger.info('Loaded %s into vHeatBackbone%s', path,
                     ' (output norms start as initialised)' if loaded.result.missing_keys else '')
        return loaded.result
