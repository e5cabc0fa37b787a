"""vHeat as a dense-prediction backbone: the one place detection and segmentation share.

The mmdet/mmseg adapters only add registration and ``init_cfg`` handling (``classification/models/mm_backbone.py``).
"""
import logging
from typing import List, Sequence

import torch
import torch.nn as nn

from .serialization import IncompatibleCheckpointError, key_mismatch, load_checkpoint
from .vheat import FREQ_EMBED_RESIZE, checkpoint_filter_fn, vHeat

_logger = logging.getLogger(__name__)


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

    def load_pretrained(self, path: str) -> nn.modules.module._IncompatibleKeys:
        """Load a classification checkpoint (official or ours): classifier dropped, frequency embeddings brought to
        this model's ``img_size`` (``freq_embed_resize``). Only the output norms (new) and the stages after the last
        output may differ; anything else is an IncompatibleCheckpointError naming the keys."""
        checkpoint = load_checkpoint(path)
        state_dict = checkpoint.get('model', checkpoint.get('state_dict', checkpoint))
        if not isinstance(state_dict, dict):
            raise IncompatibleCheckpointError(f'{path}: expected a state dict, got {type(state_dict).__name__}')
        try:
            state_dict = checkpoint_filter_fn(state_dict, self, self.freq_embed_resize)
        except (ValueError, KeyError, AttributeError) as e:
            raise IncompatibleCheckpointError(f'{path}: {e.args[0] if e.args else e}') from None
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.')}
        dropped = tuple(f'stages.{i}.' for i in range(len(self.stages), len(self.depths)))
        mismatch = key_mismatch(state_dict, self.state_dict(), ('out_norms.',), dropped)
        if mismatch:
            raise IncompatibleCheckpointError(f'{path} does not fit the vHeat backbone (another architecture or '
                                              f'size?): {mismatch}')
        result = self.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith(dropped)},
                                      strict=False)
        _logger.info('Loaded %s into vHeatBackbone (output norms start as initialised)', path)
        return result
