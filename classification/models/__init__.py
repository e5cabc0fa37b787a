"""vHeat models. Importing this package registers vheat_tiny/small/base and vheat3d_tiny/small/base with timm."""
from .vheat import vHeat, checkpoint_filter_fn, MODEL_ARGS
from .vheat3d import vHeat3D, inflate_state_dict
from .build import build_model
from .cpu_streaming import enable_cpu_streaming, disable_cpu_streaming
from .serialization import CheckpointFormatError, IncompatibleCheckpointError, load_checkpoint, UnsafeCheckpointError

__all__ = ['vHeat', 'vHeat3D', 'inflate_state_dict', 'build_model', 'checkpoint_filter_fn', 'MODEL_ARGS', 'enable_cpu_streaming',
           'disable_cpu_streaming', 'load_checkpoint', 'CheckpointFormatError', 'IncompatibleCheckpointError',
           'UnsafeCheckpointError']
