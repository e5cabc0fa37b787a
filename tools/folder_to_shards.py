"""Write an ImageNet-style folder as the Hugging Face hub keeps ImageNet (parquet) or as WebDataset tar shards.

    python tools/folder_to_shards.py /data/ImageNet2012 /data/imagenet-parquet --format parquet
    python tools/folder_to_shards.py /data/ImageNet2012 /data/imagenet-wds --format wds [--shard-size 1000]

The samples and labels are those torchvision's ImageFolder gives (sorted class names), in its order, so that a run
on either copy sees the folder run's images (``DATA.DATASET hfds`` / ``wds``). The image files are stored as they
are (no re-encoding).

- parquet: ``<out>/data/<split>-00000-of-0000N.parquet`` with the split named as on the hub (train, validation);
  columns ``image`` (``{bytes, path}``) and ``label``, whose class names are kept in the files' Hugging Face
  metadata (a ClassLabel), as ``datasets`` writes them.
- wds: ``<out>/<split>-000000.tar`` ...; each sample ``<key>.<image extension>`` and ``<key>.cls`` (the label as
  text), written with webdataset's TarWriter; ``<out>/_info.json`` lists each split's shards, their sample counts and
  the class names, in timm's format (what timm's ``wds/`` reader and this trainer read).

Each file is written under a temporary name and renamed when complete: an interrupted run leaves no half-written
file.
"""
import argparse
import json
import os
import sys
from typing import List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.cli import exit_on_errors, require_folder, require_positive, write_output  # noqa: E402
from classification.data.hub import SPLIT_NAMES  # noqa: E402
from classification.utils import commit_file  # noqa: E402
from folder_to_zip import SPLITS, folder_samples  # noqa: E402



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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', help='ImageNet-style folder with train/ and val/')
    parser.add_argument('out', help='the folder to write the parquet files or the shards into')
    parser.add_argument('--format', required=True, choices=['parquet', 'wds'])
    parser.add_argument('--shard-size', type=int, default=1000,
                        help='images a file (ImageNet: about 110 MB a thousand images)')
    parser.add_argument('--splits', nargs='+', default=list(SPLITS), choices=SPLITS, help='splits to convert')
    args = parser.parse_args(argv)
    with exit_on_errors():
        require_positive(args.shard_size, '--shard-size')
        for split in args.splits:
            require_folder(os.path.join(args.folder, split), 'folder', 'a split folder with one sub-folder per class')
        splits = {}
        for split in args.splits:
            if args.format == 'parquet':
                paths = write_parquet(args.folder, args.out, split, args.shard_size)
                print(f'{split}: {len(paths)} parquet files in {os.path.join(args.out, "data")}')
            else:
                splits[SPLIT_NAMES[split][0]] = entry = write_wds(args.folder, args.out, split, args.shard_size)
                print(f'{split}: {entry["num_samples"]} images in {len(entry["filenames"])} shards in {args.out}')
        if splits:
            info = {'name': os.path.basename(os.path.abspath(args.out)), 'splits': splits}
            write_output(os.path.join(args.out, '_info.json'), (json.dumps(info, indent=1) + '\n').encode())


if __name__ == '__main__':
    main()
