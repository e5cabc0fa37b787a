"""Every command line answers bad input with one ``error: ...`` line naming the argument or the file: a missing
input file, an unknown model or task name, a non-positive count or size, an unavailable device. Python entry points
run in this process (their main(argv)); a few also as real commands, and the shell scripts as commands."""
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT

MISSING = '/nonexistent/input.pth'
OFFICIAL = os.path.join(FIXTURES, 'official_vheat_mini.pth')
CONFIG = os.path.join(ROOT, 'classification', 'configs', 'vHeat', 'vHeat_digits.yaml')
DET_CONFIG = os.path.join(ROOT, 'detection', 'configs', 'vheat', 'mask_rcnn_fpn_coco_tiny.py')
IMAGE = os.path.join(ROOT, 'assets', 'sample.jpg')
NO_GPU = not torch.cuda.is_available()


def _numbers(tool, flags, value='0', base=()):
    """A case per count/size flag of ``tool`` set to ``value``: the line must name the flag."""
    return [(tool, [*base, flag, value], flag) for flag in flags]


CASES = [
    # tools/analysis_tools/benchmark.py
    ('tools/analysis_tools/benchmark.py', ['--device', 'tpu'], '--device'),
    *(_numbers('tools/analysis_tools/benchmark.py', ['--batch-size', '--train-batch-size', '--img-size', '--hires-size',
                                      '--hires-batch-size', '--rounds', '--sweep-batch', '--volume-channels',
                                      '--volume-budget'])),
    *(_numbers('tools/analysis_tools/benchmark.py', ['--warmup', '--threads'], value='-1')),
    ('tools/analysis_tools/benchmark.py', ['--step-profile', '16', '1'], '--step-profile SIZE must be >= 32, got 16'),
    ('tools/analysis_tools/benchmark.py', ['--step-profile', '224', '0'], '--step-profile BATCH must be positive'),
    # tools/analysis_tools/compare_real.py
    ('tools/analysis_tools/compare_real.py', ['--data-path', '/nonexistent/fashion-mnist'],
     '/nonexistent/fashion-mnist'),
    ('tools/analysis_tools/compare_real.py', ['--models', 'vheat', 'alexnet'], "--models: unknown value 'alexnet'"),
    ('tools/analysis_tools/compare_real.py', ['--budget-minutes', '0'], '--budget-minutes'),
    # tools/analysis_tools/downstream_complexity.py
    ('tools/analysis_tools/downstream_complexity.py', [MISSING], MISSING),
    # tools/misc/demo3d.py
    ('tools/misc/demo3d.py', ['--task', 'painting'], "argument --task: invalid choice: 'painting'"),
    *(_numbers('tools/misc/demo3d.py', ['--train', '--test', '--epochs', '--batch', '--dims', '--lr', '--budget'],
               base=['--task', 'video'])),
    # tools/analysis_tools/downstream_learning_check.py
    ('tools/analysis_tools/downstream_learning_check.py', ['--task', 'pose'],
     "argument --task: invalid choice: 'pose'"),
    ('tools/analysis_tools/downstream_learning_check.py', ['--task', 'det', '--minutes', '0'], '--minutes'),
    # tools/deployment/export_onnx.py
    ('tools/deployment/export_onnx.py', ['--model', 'nonexistent', '--out', 'x.onnx'],
     "--model: unknown model 'nonexistent'"),
    ('tools/deployment/export_onnx.py', ['--checkpoint', MISSING, '--out', 'x.onnx'], MISSING),
    *(_numbers('tools/deployment/export_onnx.py', ['--img-size', '--check-batch', '--batch', '--rounds', '--atol'],
               base=['--out', 'x.onnx'])),
    # tools/dataset_converters/folder_to_zip.py
    ('tools/dataset_converters/folder_to_zip.py', ['/nonexistent/imagenet', '/tmp/zipped'],
     '/nonexistent/imagenet/train'),
    # tools/dataset_converters/folder_to_shards.py
    ('tools/dataset_converters/folder_to_shards.py', ['/nonexistent/imagenet', 'out', '--format', 'wds'],
     '/nonexistent/imagenet/train'),
    ('tools/dataset_converters/folder_to_shards.py', [ROOT, 'out', '--format', 'parquet', '--shard-size', '0'],
     '--shard-size'),
    ('tools/dataset_converters/folder_to_shards.py', [ROOT, 'out', '--format', 'tfrecord'],
     "argument --format: invalid choice"),
    # tools/misc/image_demo.py
    ('tools/misc/image_demo.py', ['/nonexistent/photo.jpg', DET_CONFIG, OFFICIAL, '--out-dir', 'o'],
     '/nonexistent/photo.jpg'),
    ('tools/misc/image_demo.py', [IMAGE, '/nonexistent/config.py', OFFICIAL, '--out-dir', 'o'],
     '/nonexistent/config.py'),
    ('tools/misc/image_demo.py', [IMAGE, DET_CONFIG, MISSING, '--out-dir', 'o'], MISSING),
    ('tools/misc/image_demo.py', [IMAGE, DET_CONFIG, OFFICIAL, '--out-dir', 'o', '--device', 'gpu0'], '--device'),
    ('tools/misc/image_demo.py', [IMAGE, DET_CONFIG, OFFICIAL, '--out-dir', 'o', '--score-thr', '-1'], '--score-thr'),
    # tools/misc/predict.py
    ('tools/misc/predict.py', ['/nonexistent/photos', '--model', 'vheat_tiny', '--pretrained'], '/nonexistent/photos'),
    ('tools/misc/predict.py', [IMAGE, '--model', 'nonexistent', '--pretrained'],
     "--model: unknown model 'nonexistent'"),
    ('tools/misc/predict.py', [IMAGE, '--model', 'vheat_tiny', '--checkpoint', MISSING], MISSING),
    *(_numbers('tools/misc/predict.py', ['--topk', '--batch-size'],
               base=[IMAGE, '--model', 'vheat_tiny', '--pretrained'])),
    # tools/test.py, tools/train.py
    ('tools/test.py', ['/nonexistent/config.py', OFFICIAL], '/nonexistent/config.py'),
    ('tools/test.py', [DET_CONFIG, MISSING], MISSING),
    ('tools/train.py', ['/nonexistent/config.py'], '/nonexistent/config.py'),
    ('tools/train.py', [DET_CONFIG, '--resume', MISSING], MISSING),
    ('tools/train.py', [DET_CONFIG, '--launcher', 'slurm'], '--launcher slurm: this process was not started by srun'),
    ('tools/test.py', [DET_CONFIG, OFFICIAL, '--launcher', 'slurm'], '--launcher slurm: this process was not started'),
    # tools/visualization/visualize_erf.py, tools/visualization/visualize_heat.py
    ('tools/visualization/visualize_erf.py', ['--image', '/nonexistent/photo.jpg'], '/nonexistent/photo.jpg'),
    ('tools/visualization/visualize_erf.py', ['--checkpoint', f'vheat_tiny={MISSING}'], MISSING),
    ('tools/visualization/visualize_erf.py', ['--checkpoint', f'alexnet={OFFICIAL}'], "unknown value 'alexnet'"),
    *(_numbers('tools/visualization/visualize_erf.py', ['--images', '--size'])),
    ('tools/visualization/visualize_heat.py', ['--image', '/nonexistent/photo.jpg'], '/nonexistent/photo.jpg'),
    ('tools/visualization/visualize_heat.py', ['--kt', '4', '-1'], '--kt'),
    # classification/
    ('classification/main.py', ['--cfg', CONFIG, '--data-path', '/nonexistent/data'], '/nonexistent/data'),
    ('classification/main.py', ['--cfg', '/nonexistent/config.yaml'], '/nonexistent/config.yaml'),
    *(_numbers('classification/main.py', ['--batch-size', '--accumulation-steps'], base=['--cfg', CONFIG])),
    ('classification/interpolate4downstream.py', ['--pt_pth', MISSING, '--tg_pth', 'x.pth'], MISSING),
    *(_numbers('classification/interpolate4downstream.py', ['--pt_size', '--tg_size'],
               base=['--pt_pth', OFFICIAL, '--tg_pth', 'x.pth'])),
    ('classification/data/make_digits.py', ['/tmp/digits', '--size', '0'], '--size'),
]
if NO_GPU:
    CASES += [('tools/analysis_tools/benchmark.py', ['--device', 'cuda'], '--device cuda: no CUDA GPU'),
              ('tools/misc/predict.py', [IMAGE, '--model', 'vheat_tiny', '--pretrained', '--device', 'cuda:0'],
               '--device cuda:0: no CUDA GPU')]


def _load(tool: str):
    """The tool's module, loaded from its file as when it runs."""
    name = 'cli_' + tool.replace('/', '_')[:-3]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, tool))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _error_line(code, stderr: str, fragment: str) -> str:
    assert code not in (0, None), stderr
    assert 'Traceback' not in stderr, stderr
    errors = [line for line in stderr.splitlines() if 'error: ' in line]
    assert len(errors) == 1, stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize('tool,argv,fragment', CASES, ids=[f'{t}:{" ".join(a)}' for t, a, _ in CASES])
def test_bad_input_is_one_error_line_naming_it(tool, argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a failing tool might write lands in the repository
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr), \
            contextlib.redirect_stdout(io.StringIO()):
        _load(tool).main(argv)
    line = _error_line(exit_info.value.code, stderr.getvalue(), fragment)
    # argparse's own usage errors keep their status 2 and format; every other error is ours
    assert exit_info.value.code == (2 if 'invalid choice' in line else 1)
    assert not os.listdir(tmp_path)


COMMANDS = [
    (['tools/deployment/export_onnx.py', '--model', 'nonexistent', '--out', 'x.onnx'],
     "--model: unknown model 'nonexistent'"),
]
SCRIPTS = [
    (['tools/dist_train.sh', '/nonexistent/config.py', '2'], 'CONFIG: file not found: /nonexistent/config.py'),
    (['tools/dist_train.sh', DET_CONFIG, '0'], "GPUS must be a positive integer, got '0'"),
    (['tools/dist_test.sh', DET_CONFIG, MISSING, '1'], f'CHECKPOINT: file not found: {MISSING}'),
    (['tools/dist_test.sh', '/nonexistent/config.py', OFFICIAL, '1'], 'CONFIG: file not found'),
    (['tools/dist_test.sh', DET_CONFIG, OFFICIAL, '-2'], "GPUS must be a positive integer, got '-2'"),
    (['modelcard.sh', 'huge', 'train'], "unknown model size 'huge'"),
    (['modelcard.sh', 'tiny', 'fly'], "unknown action 'fly'"),
    (['tools/visualization/make_figures.sh', '--fast'], 'unknown arguments: --fast'),
    (['tools/install.sh', '--everything'], 'unknown arguments: --everything'),
]


SLURM_SCRIPTS = [  # (command, environment, fragment): mmdet's SLURM arguments and variables
    (['tools/slurm_train.sh', 'gpu', 'job', DET_CONFIG], {}, 'usage: tools/slurm_train.sh PARTITION JOB_NAME'),
    (['tools/slurm_train.sh', 'gpu', 'job', '/nonexistent/config.py', 'w'], {}, 'CONFIG: file not found'),
    (['tools/slurm_train.sh', 'gpu', 'job', OFFICIAL, 'w'], {}, 'CONFIG: expected a classification .yaml or a '
                                                              'downstream .py config'),
    (['tools/slurm_train.sh', 'gpu', 'job', CONFIG, 'w'], {'GPUS': '0'}, "GPUS must be a positive integer, got '0'"),
    (['tools/slurm_train.sh', 'gpu', 'job', CONFIG, 'w'], {'GPUS_PER_NODE': 'all'},
     "GPUS_PER_NODE must be a whole number (0: no GPU), got 'all'"),
    (['tools/slurm_train.sh', 'gpu', 'job', CONFIG, 'w'], {'CPUS_PER_TASK': '-1'}, 'CPUS_PER_TASK must be a positive'),
    (['tools/slurm_test.sh', 'gpu', 'job', DET_CONFIG, MISSING], {}, f'CHECKPOINT: file not found: {MISSING}'),
    (['tools/slurm_test.sh', 'gpu', 'job', DET_CONFIG], {}, 'usage: tools/slurm_test.sh PARTITION JOB_NAME CONFIG'),
    # where srun is not on the PATH: bash, dirname and sed only
    (['tools/slurm_train.sh', 'gpu', 'job', CONFIG, 'w'], {'PATH': 'BIN'}, 'srun not found: slurm_train.sh runs on '
                                                                           'a SLURM cluster'),
]


def _run_command(command, tmp_path, environment=None):
    runner = [shutil.which('bash')] if command[0].endswith('.sh') else [sys.executable]
    return subprocess.run([*runner, os.path.join(ROOT, command[0]), *command[1:]], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', **(environment or {})),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('command,fragment', COMMANDS + SCRIPTS, ids=[' '.join(c) for c, _ in COMMANDS + SCRIPTS])
def test_commands_answer_bad_input_in_one_line(command, fragment, tmp_path):
    """As a user runs them: exit status 1, stderr holds one error line (and no traceback)."""
    result = _run_command(command, tmp_path)
    assert result.returncode == 1, result.stdout[-1000:] + result.stderr[-2000:]
    _error_line(result.returncode, result.stderr, fragment)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize('command,environment,fragment', SLURM_SCRIPTS,
                         ids=[' '.join(c[1:] + [f'{k}={v}' for k, v in e.items()]) for c, e, _ in SLURM_SCRIPTS])
def test_slurm_scripts_answer_bad_input_in_one_line_before_submitting(command, environment, fragment, tmp_path):
    if environment.get('PATH') == 'BIN':
        bin_dir = tmp_path / 'bin'
        bin_dir.mkdir()
        for tool in ('dirname', 'sed', 'basename'):
            os.symlink(shutil.which(tool), bin_dir / tool)
        environment = dict(environment, PATH=str(bin_dir))
    result = _run_command(command, tmp_path, environment)
    assert result.returncode == 1, result.stdout[-1000:] + result.stderr[-2000:]
    _error_line(result.returncode, result.stderr, fragment)
    assert sorted(os.listdir(tmp_path)) in ([], ['bin'])  # nothing written, nothing submitted
