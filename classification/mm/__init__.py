"""Everything that imports mmengine, mmdet or mmseg: the backbone adapter (:mod:`.backbone`), the durable checkpoint
hook (:mod:`.hooks`), weights-only reading of Runner checkpoints (:mod:`.checkpoints`, registered on import) and the
Runner of tools/train.py and tools/test.py (:mod:`.runner`). ``detection/vheat`` and ``segmentation/vheat`` import
the first three."""
