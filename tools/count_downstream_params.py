"""Builds every downstream config's model (Config.fromfile + the library's MODELS.build) and prints its
parameter counts (backbone, neck, heads, total), to compare with the paper's ~53M (Mask R-CNN vHeat-T) etc.

    python tools/count_downstream_params.py [CONFIG ...]   (default: all configs under */configs/vheat)
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from classification.cli import exit_on_errors, require_file  # noqa: E402


def build_model(cfg: Config):
    """Build the model with the registry of the library that the config is for (its custom_imports)."""
    imports = cfg.get('custom_imports', {}).get('imports', [])
    if any(name.startswith('segmentation') for name in imports):
        import segmentation.vheat  # noqa: F401
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        import detection.vheat  # noqa: F401
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg.model.backbone.pop('init_cfg', None)  # counts only: no checkpoint needed
    return MODELS.build(cfg.model)


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='*')
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with exit_on_errors():
        configs = [require_file(path, 'CONFIG', 'config file') for path in args.configs] or sorted(
            glob.glob(os.path.join(root, 'detection/configs/vheat/*.py')) +
            glob.glob(os.path.join(root, 'segmentation/configs/vheat/*.py')))
        count_all(configs)


def count_all(configs) -> None:
    print(f'{"config":58s} {"backbone":>9s} {"neck":>7s} {"heads":>7s} {"total":>8s}  (M parameters)')
    for path in configs:
        model = build_model(Config.fromfile(path))
        backbone = count(model.backbone)
        neck = count(model.neck) if getattr(model, 'neck', None) is not None else 0.
        total = count(model)
        print(f'{os.path.basename(path):58s} {backbone:9.2f} {neck:7.2f} {total - backbone - neck:7.2f} {total:8.2f}')


if __name__ == '__main__':
    main()
