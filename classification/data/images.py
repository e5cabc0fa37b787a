"""Reading one image: 8-bit RGB (or greyscale) from a file or from bytes, with errors that name it; what every
data layout shares."""
import io
import os
from typing import Union

import numpy as np
import torch
from PIL import Image

from classification.models.errors import VHeatError

SAMPLE_IMAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'assets',
                            'sample.jpg')
# the hub's split names first (what classification/data/writers.py writes), then the other names read
SPLIT_NAMES = {'train': ('train',), 'val': ('validation', 'val')}


class DataError(VHeatError, RuntimeError):
    """The data set is missing, malformed, or holds an unreadable image."""


def decode_image(source: Union[str, bytes], name: str, mode: str = 'RGB') -> Image.Image:
    """An image as 8-bit ``mode`` ('RGB' or 'L') from a path or from its bytes (``name`` says where it came from
    in errors); a broken or truncated file is an error that names it, never skipped silently.

    16-bit images are scaled by their bit depth (65535 becomes 255) instead of being clipped; images whose values
    have no defined range (32-bit integer or float) are refused.
    """
    try:
        with (open(source, 'rb') if isinstance(source, str) else io.BytesIO(source)) as f:
            return _convert(Image.open(f), name, mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f'cannot read image {name}: {e}') from None


def _convert(image: Image.Image, name: str, mode: str) -> Image.Image:
    if image.mode.startswith('I;16'):
        pixels = np.asarray(image, dtype=np.uint32)
        return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8)).convert(mode)
    if image.mode in ('I', 'F'):
        kind = '32-bit integer' if image.mode == 'I' else 'floating point'
        raise DataError(f'cannot read image {name}: mode {image.mode} ({kind}) has no defined value range; '
                        'convert it to 8 or 16 bits')
    return image.convert(mode)


def load_image(path: str, mode: str = 'RGB') -> Image.Image:
    """:func:`decode_image` of a file."""
    return decode_image(path, path, mode)


def load_float_image(path: str) -> torch.Tensor:
    """An RGB image as a float64 (H, W, 3) tensor in [0, 1] (the figures' heat fields)."""
    return torch.from_numpy(np.asarray(load_image(path), dtype=np.float64) / 255.0)
