from .build import DataError, batches, build_loader, build_dataset, derived_seed, load_image, seed_everything

__all__ = ['DataError', 'batches', 'build_loader', 'build_dataset', 'derived_seed', 'load_image', 'seed_everything']
