"""``tools/test.py --show-dir`` for segmentation: each test image painted into one folder."""
import os

import mmcv
from mmengine import fileio
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SegPaintEveryImageHook(SegVisualizationHook):
    """mmseg's visualisation hook writing ``out_dir/<image name>`` for each test image, as mmdet's does. (mmseg's
    own paints one image in ``interval``, 50, into the visualizer's backends.) As in mmdet and mmseg, only the
    main process paints: with several processes, the images of its shard."""

    def __init__(self, out_dir: str, **kwargs):
        kwargs.pop('draw', None)
        super().__init__(draw=True, **kwargs)
        self.out_dir = out_dir

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict, outputs) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        for output in outputs:
            image = mmcv.imfrombytes(fileio.get(output.img_path, backend_args=self.backend_args), channel_order='rgb')
            name = os.path.basename(output.img_path)
            self._visualizer.add_datasample(f'test_{name}', image, data_sample=output, show=False,
                                            out_file=os.path.join(self.out_dir, name))
