"""Write scikit-learn's digits (1,797 8x8 images, shipped with scikit-learn) as an ImageFolder for the demo.

    python classification/data/make_digits.py data/digits    # train/ and val/ (80/20, stratified, seed 0)

Images are upscaled to 32x32 RGB PNGs (nearest neighbour), one folder per digit.
"""
import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from classification.core.cli import exit_on_errors, require_positive


def write_digits(root: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> None:
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, val_idx = train_test_split(indices, test_size=val_fraction, stratify=digits.target,
                                          random_state=seed)
    for split, split_idx in (('train', train_idx), ('val', val_idx)):
        for i in split_idx:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            image = Image.fromarray(images[i]).resize((size, size), Image.NEAREST).convert('RGB')
            image.save(os.path.join(folder, f'{i:04d}.png'))
    print(f'wrote {len(train_idx)} train and {len(val_idx)} val images to {root}')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root')
    parser.add_argument('--size', type=int, default=32)
    args = parser.parse_args(argv)
    with exit_on_errors():
        require_positive(args.size, '--size', minimum=8)  # the digits are 8x8
        write_digits(args.root, args.size)


if __name__ == '__main__':
    main()
