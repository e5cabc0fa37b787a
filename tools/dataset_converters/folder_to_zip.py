"""Write the official trainer's zip layout of an ImageNet-style folder (what ``--zip`` reads).

    python tools/dataset_converters/folder_to_zip.py /data/ImageNet2012 /data/ImageNet2012_zip

For each split (train/, val/; one sub-folder per class): ``<out>/<split>.zip`` holding ``class/file`` members
(stored, not recompressed: JPEGs do not shrink) and ``<out>/<split>_map.txt`` with ``class/file<TAB>label`` lines,
the labels the class indices torchvision's ImageFolder gives (sorted class names), in ImageFolder's order, so that
the zip run and the folder run see the same samples. Each file is written under a temporary name and renamed
when complete: an interrupted run leaves no half-written zip.
"""
import argparse
import os

from classification.core.cli import exit_on_errors, require_folder
from classification.data.writers import SPLITS, write_zip_split


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', help='ImageNet-style folder with train/ and val/')
    parser.add_argument('out', help='where train.zip, train_map.txt, val.zip and val_map.txt are written')
    parser.add_argument('--splits', nargs='+', default=list(SPLITS), choices=SPLITS, help='splits to convert')
    args = parser.parse_args(argv)
    with exit_on_errors():
        for split in args.splits:
            require_folder(os.path.join(args.folder, split), 'folder', 'a split folder with one sub-folder per class')
        os.makedirs(args.out, exist_ok=True)
        for split in args.splits:
            count = write_zip_split(args.folder, args.out, split)
            print(f'{split}: {count} images -> {os.path.join(args.out, split)}.zip, {split}_map.txt')


if __name__ == '__main__':
    main()
