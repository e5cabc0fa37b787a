from .build import DataError, build_loader, build_dataset, seed_worker

__all__ = ['DataError', 'build_loader', 'build_dataset', 'seed_worker']
