"""Write the official trainer's zip layout of an ImageNet-style folder (what ``--zip`` reads).

    python tools/folder_to_zip.py /data/ImageNet2012 /data/ImageNet2012_zip

For each split (train/, val/; one sub-folder per class): ``<out>/<split>.zip`` holding ``class/file`` members
(stored, not recompressed: JPEGs do not shrink) and ``<out>/<split>_map.txt`` with ``class/file<TAB>label`` lines,
the labels the class indices torchvision's ImageFolder gives (sorted class names), in ImageFolder's order, so that
the zip run and the folder run see the same samples. Each file is written under a temporary name and renamed
when complete: an interrupted run leaves no half-written zip.
"""
import argparse
import os
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.cli import exit_on_errors, require_folder  # noqa: E402
from classification.utils import commit_file  # noqa: E402

SPLITS = ('train', 'val')


def folder_samples(root: str):
    """(class names, [(relative path, label)]) in torchvision ImageFolder's order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    classes, class_to_idx = find_classes(root)
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    return classes, [(os.path.relpath(path, root).replace(os.sep, '/'), label) for path, label in samples]


def write_split(root: str, out: str, split: str) -> int:
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
            count = write_split(args.folder, args.out, split)
            print(f'{split}: {count} images -> {os.path.join(args.out, split)}.zip, {split}_map.txt')


if __name__ == '__main__':
    main()
