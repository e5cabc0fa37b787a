"""ImageNet as the Hugging Face hub keeps it (``DATA.DATASET hfds``): rows of ``image`` (``{bytes, path}``) and
``label`` (a ClassLabel), read through the ``datasets`` package as a map-style data set, so that the trainer's
sampler, per-sample seeding and exact mid-epoch resume apply as for folders.

``DATA.DATA_PATH`` is one of
- a folder of parquet files as the hub lays them out (``data/train-00000-of-00257.parquet``,
  ``data/validation-00000-of-00013.parquet``; ``<split>-*.parquet`` or ``<split>/*.parquet`` anywhere below it).
  ``datasets.load_dataset`` converts them into its cache (``HF_DATASETS_CACHE``) on first use, as it always does;
- a ``DatasetDict.save_to_disk`` folder (``dataset_dict.json`` with a folder per split), read in place;
- a hub name (``ILSVRC/imagenet-1k``), downloaded by ``datasets`` when the network (and the hub's terms) allow.

The validation split is ``validation`` (the hub's name) or ``val``. Before any training the files, the columns and
every label are checked: a file that is not parquet, a missing column or a label out of range is a DataError
naming the file (and the row).
"""
import glob
import json
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from .images import SPLIT_NAMES, DataError, decode_image

IMAGE_COLUMN, LABEL_COLUMN = 'image', 'label'


def parquet_files(root: str, split: str) -> List[str]:
    """The parquet files of ``split`` below ``root``: ``<split>-*.parquet`` (the hub's names) or ``<split>/*.parquet``,
    for the first of the split's names that has any."""
    for name in SPLIT_NAMES[split]:
        files = sorted(set(glob.glob(os.path.join(root, '**', f'{name}-*.parquet'), recursive=True) +
                           glob.glob(os.path.join(root, '**', name, '*.parquet'), recursive=True)))
        if files:
            return files
    return []


def describe_source(root: str) -> str:
    """'save_to_disk', 'parquet' or 'hub' (a name that is no local path)."""
    if os.path.isfile(os.path.join(root, 'dataset_dict.json')):
        return 'save_to_disk'
    if os.path.isdir(root):
        return 'parquet'
    return 'hub'


def check_source(root: str, eval_only: bool) -> None:
    """Before the run writes anything: the splits' files exist and each parquet file is readable."""
    source = describe_source(root)
    splits = ('val',) if eval_only else ('train', 'val')
    if source == 'save_to_disk':
        with open(os.path.join(root, 'dataset_dict.json')) as f:
            present = json.load(f).get('splits', [])
        for split in splits:
            if not any(name in present for name in SPLIT_NAMES[split]):
                raise DataError(f'{root}/dataset_dict.json lists no {" or ".join(SPLIT_NAMES[split])} split '
                                f'(it has {", ".join(present) or "none"})')
    elif source == 'parquet':
        import pyarrow.parquet as pq
        for split in splits:
            files = parquet_files(root, split)
            if not files:
                raise DataError(f'no parquet files of the {split} split under {root} (expected '
                                f'{SPLIT_NAMES[split][0]}-*.parquet, as the hub names them)')
            for path in files:
                try:
                    columns = pq.read_schema(path).names
                except Exception as e:  # pyarrow raises ArrowInvalid, OSError...: the file is unusable
                    raise DataError(f'{path} is not a readable parquet file ({str(e).splitlines()[0]})') from None
                check_columns(path, columns)


def check_columns(where: str, columns: List[str]) -> None:
    """Both columns are there (``datasets`` would fill a column one file lacks with nulls)."""
    missing = [c for c in (IMAGE_COLUMN, LABEL_COLUMN) if c not in columns]
    if missing:
        raise DataError(f'{where}: no {" and no ".join(repr(m) for m in missing)} column (it has '
                        f'{", ".join(columns)})')


class HubImageDataset(torch.utils.data.Dataset):
    """One split of a Hugging Face image-classification data set as ``(image, label)`` with ``transform`` applied;
    ``classes``: the label feature's names (kept in checkpoints for tools/misc/predict.py)."""

    def __init__(self, root: str, split: str, num_classes: int, transform=None, mode: str = 'RGB'):
        self.root, self.transform, self.mode = root, transform, mode
        self.dataset, self.where = _load_split(root, split)
        self._file_ends = None
        check_columns(self._name(), self.dataset.column_names)
        import datasets
        self.dataset = self.dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        column = self.dataset.data.column(LABEL_COLUMN)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f'{self._row_name(row)}: no label')
        labels = np.asarray(column.to_numpy(zero_copy_only=False))
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            row = int(bad[0])
            raise DataError(f'{self._row_name(row)}: label {labels[row]} is out of range for MODEL.NUM_CLASSES '
                            f'{num_classes} (0 to {num_classes - 1})')
        self.targets = labels.tolist()
        feature = self.dataset.features[LABEL_COLUMN]
        self.classes = list(feature.names) if getattr(feature, 'names', None) else None

    def _name(self) -> str:
        return self.where[0] if len(self.where) == 1 else f'{self.root} ({len(self.where)} files)'

    def _row_name(self, row: int) -> str:
        """The file holding ``row`` and the row's place in it (parquet: from each file's row count)."""
        if self.where and self.where[0].endswith('.parquet'):
            if self._file_ends is None:
                import pyarrow.parquet as pq
                self._file_ends = np.cumsum([pq.read_metadata(f).num_rows for f in self.where])
            index = int(np.searchsorted(self._file_ends, row, side='right'))
            first = int(self._file_ends[index - 1]) if index else 0
            return f'{self.where[index]} row {row - first}'
        return f'{self._name()} row {row}'

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        row = self.dataset[index]
        image = row[IMAGE_COLUMN]
        if image.get('bytes'):
            image = decode_image(image['bytes'], self._row_name(index), self.mode)
        elif image.get('path'):
            image = decode_image(image['path'], image['path'], self.mode)
        else:
            raise DataError(f'{self._row_name(index)}: the image has neither bytes nor a path')
        return (self.transform(image) if self.transform is not None else image), row[LABEL_COLUMN]


def _load_split(root: str, split: str) -> Tuple[object, List[str]]:
    """(the ``datasets.Dataset`` of ``split``, the files or folder it comes from)."""
    import datasets
    datasets.disable_progress_bars()  # the trainer logs what happens; bars would interleave across ranks
    source = describe_source(root)
    if source == 'save_to_disk':
        splits = datasets.load_from_disk(root)
        name = next(n for n in SPLIT_NAMES[split] if n in splits)
        return splits[name], [os.path.join(root, name)]
    if source == 'parquet':
        files = parquet_files(root, split)
        try:
            return datasets.load_dataset('parquet', data_files={split: files}, split=split), files
        except Exception as e:  # a file that passed the footer check but whose data is corrupt
            raise DataError(f'cannot read the {split} parquet files under {root}: {str(e).splitlines()[0]}') from None
    last: Optional[Exception] = None
    for name in SPLIT_NAMES[split]:
        try:
            return datasets.load_dataset(root, split=name), [root]
        except ValueError as e:  # an unknown split name: try the next
            last = e
        except Exception as e:  # offline, no access to a gated data set, no such data set
            raise DataError(f'{root}: not a local folder, and the Hugging Face hub could not provide it '
                            f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from None
    raise DataError(f'{root}: no {" or ".join(SPLIT_NAMES[split])} split ({last})')
