"""Writing an ImageNet-style folder (``train/``, ``val/``, a sub-folder per class) in the other layouts the trainer
reads: the official zip layout (``--zip``), the Hugging Face hub's parquet files (``DATA.DATASET hfds``) and
WebDataset tar shards (``DATA.DATASET wds``). The samples and labels are those torchvision's ImageFolder gives
(sorted class names), in its order, so that a run on any copy sees the folder run's images; image files are stored
as they are. Each file is written under a temporary name and renamed when complete."""
import json
import os
import zipfile
from typing import Dict, List, Sequence, Tuple

from classification.core.fileio import commit_file, write_output

from .images import SPLIT_NAMES

SPLITS = ('train', 'val')


def folder_samples(root: str):
    """(class names, [(relative path, label)]) in torchvision ImageFolder's order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    classes, class_to_idx = find_classes(root)
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    return classes, [(os.path.relpath(path, root).replace(os.sep, '/'), label) for path, label in samples]


def write_zip_split(root: str, out: str, split: str) -> int:
    """``<out>/<split>.zip`` and ``<out>/<split>_map.txt`` from ``<root>/<split>``; the number of images."""
    _, samples = folder_samples(os.path.join(root, split))
    zip_path, map_path = os.path.join(out, f'{split}.zip'), os.path.join(out, f'{split}_map.txt')
    with zipfile.ZipFile(zip_path + '.tmp', 'w', compression=zipfile.ZIP_STORED) as archive:
        for relative, _ in samples:
            archive.write(os.path.join(root, split, relative), relative)
    with open(map_path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(f'{relative}\t{label}\n' for relative, label in samples)
    commit_file(zip_path + '.tmp', zip_path)
    commit_file(map_path + '.tmp', map_path)
    return len(samples)


def chunks(samples: List[Tuple[str, int]], size: int) -> List[List[Tuple[str, int]]]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def write_parquet(root: str, out: str, split: str, shard_size: int) -> List[str]:
    """The parquet files of one split (the hub's layout); their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    classes, samples = folder_samples(os.path.join(root, split))
    features = {'image': {'_type': 'Image'}, 'label': {'names': classes, '_type': 'ClassLabel'}}
    schema = pa.schema([('image', pa.struct([('bytes', pa.binary()), ('path', pa.string())])),
                        ('label', pa.int64())], metadata={'huggingface': json.dumps({'info': {'features': features}})})
    name, parts = SPLIT_NAMES[split][0], chunks(samples, shard_size)
    os.makedirs(os.path.join(out, 'data'), exist_ok=True)
    paths = []
    for index, part in enumerate(parts):
        path = os.path.join(out, 'data', f'{name}-{index:05d}-of-{len(parts):05d}.parquet')
        images = []
        for relative, _ in part:
            with open(os.path.join(root, split, relative), 'rb') as f:
                images.append({'bytes': f.read(), 'path': relative})
        table = pa.table({'image': images, 'label': [label for _, label in part]}, schema=schema)
        pq.write_table(table, path + '.tmp')
        commit_file(path + '.tmp', path)
        paths.append(path)
    return paths


def write_wds(root: str, out: str, split: str, shard_size: int) -> dict:
    """The tar shards of one split; its entry of ``_info.json``."""
    from webdataset import TarWriter
    classes, samples = folder_samples(os.path.join(root, split))
    name = SPLIT_NAMES[split][0]
    os.makedirs(out, exist_ok=True)
    filenames, lengths = [], []
    for index, part in enumerate(chunks(samples, shard_size)):
        filename = f'{name}-{index:06d}.tar'
        path = os.path.join(out, filename)
        with open(path + '.tmp', 'wb') as stream, TarWriter(stream) as writer:
            for number, (relative, label) in enumerate(part):
                extension = os.path.splitext(relative)[1].lstrip('.').lower()
                with open(os.path.join(root, split, relative), 'rb') as f:
                    # keys end at the first dot of a name (webdataset): the sample's index in the split
                    writer.write({'__key__': f'{index * shard_size + number:08d}', extension: f.read(),
                                  'cls': str(label).encode()})
        commit_file(path + '.tmp', path)
        filenames.append(filename)
        lengths.append(len(part))
    return {'name': name, 'num_samples': len(samples), 'filenames': filenames, 'shard_lengths': lengths,
            'classes': classes}


def write_shards(root: str, out: str, form: str, shard_size: int, splits: Sequence[str] = SPLITS) -> Dict[str, str]:
    """The splits as parquet files (``form`` 'parquet') or tar shards with ``_info.json`` ('wds', timm's format);
    {split: what was written}."""
    written, info = {}, {}
    for split in splits:
        if form == 'parquet':
            paths = write_parquet(root, out, split, shard_size)
            written[split] = f'{len(paths)} parquet files in {os.path.join(out, "data")}'
        else:
            info[SPLIT_NAMES[split][0]] = entry = write_wds(root, out, split, shard_size)
            written[split] = f'{entry["num_samples"]} images in {len(entry["filenames"])} shards in {out}'
    if info:
        write_output(os.path.join(out, '_info.json'), (json.dumps(
            {'name': os.path.basename(os.path.abspath(out)), 'splits': info}, indent=1) + '\n').encode())
    return written
