from .build import (DATASETS, BatchNormalize, batches, build_dataset, build_loader, build_transform, input_channels,
                    train_epochs)
from .images import DataError, decode_image, load_image
from .seeding import derived_seed, seed_everything

__all__ = ['DATASETS', 'BatchNormalize', 'DataError', 'batches', 'build_dataset', 'build_loader', 'build_transform',
           'decode_image', 'derived_seed', 'input_channels', 'load_image', 'seed_everything', 'train_epochs']
