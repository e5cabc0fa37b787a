"""Write an ImageNet-style folder as the Hugging Face hub keeps ImageNet (parquet) or as WebDataset tar shards.

    python tools/dataset_converters/folder_to_shards.py /data/ImageNet2012 /data/imagenet-parquet --format parquet
    python tools/dataset_converters/folder_to_shards.py /data/ImageNet2012 /data/imagenet-wds --format wds \
        [--shard-size 1000]

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
import os

from classification.core.cli import exit_on_errors, require_folder, require_positive
from classification.data.writers import SPLITS, write_shards


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
        written = write_shards(args.folder, args.out, args.format, args.shard_size, args.splits)
        for split, what in written.items():
            print(f'{split}: {what}')


if __name__ == '__main__':
    main()
