"""RandAugment as the official runs had it, on any Pillow.

timm's RandAugment with ``inc1`` (``PosterizeIncreasing``) and magnitude noise (``mstd0.5``) asks for 0 bits at
the top magnitude (plain ``Posterize`` does at magnitude 0). The Pillow of the official runs (< 13) answered with
a black image; Pillow 13 raises ``ValueError: bits must be between or equal to 1 and 8``, which stopped
``rand-m9-mstd0.5-inc1`` within the first minute of an ImageNet epoch. Importing this module registers, in timm's
own op table, a posterize that keeps 1..8 bits exactly as Pillow does and turns 0 bits into the black image, so
the distribution of operations and magnitudes is timm's, unchanged.
"""
from PIL import Image, ImageOps
from timm.data import auto_augment

POSTERIZE_OPS = ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal')


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of each channel; 0 bits give a black image."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


for _name in POSTERIZE_OPS:
    auto_augment.NAME_TO_OP[_name] = posterize
