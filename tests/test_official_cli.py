"""The official trainer's command lines, data layouts and checkpoints: the README's evaluation and throughput lines,
every official flag, zip data with each cache mode, fine-tuning from a 1000-class checkpoint (file and URL),
resuming an official training checkpoint, the official schedules."""
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from yacs.config import CfgNode

from conftest import FIXTURES, ROOT
from official_layout import _official_key, official_param_groups, to_official
from test_trainer import MAIN, TINY_CONFIG, env, free_port, main_error, make_folder
from tools.dataset_converters import folder_to_zip

OFFICIAL_MINI = os.path.join(FIXTURES, 'official_vheat_mini.pth')
MINI_CONFIG = ('MODEL:\n  NAME: mini\n  NUM_CLASSES: 10\n  VHEAT:\n    EMBED_DIM: 16\n    DEPTHS: [1, 1, 2, 1]\n'
               '    POST_NORM: False\nDATA:\n  IMG_SIZE: 64\n  NUM_WORKERS: 0\n')


def _launch(*args):
    """``python -m torch.distributed.launch ... main.py`` as the official README writes it, run from
    classification/ (one process)."""
    launch = ['-m', 'torch.distributed.launch', '--nnodes=1', '--node_rank=0', '--nproc_per_node=1',
              '--master_addr=127.0.0.1', f'--master_port={free_port()}']
    return subprocess.run([sys.executable, *launch, 'main.py', *args], env=env(),
                          cwd=os.path.join(ROOT, 'classification'), capture_output=True, text=True, timeout=300)


def _train_in_process(*argv) -> None:
    """The trainer's main() in this process (a single-process run)."""
    import classification.main as trainer
    trainer.main(list(argv))


def _config(tmp_path, text=TINY_CONFIG, name='cfg.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_official_readme_eval_and_throughput_command_lines(tmp_path):
    classes = [str(i) for i in range(10)]
    data = make_folder(tmp_path / 'data', classes, 1, 2, size=64)
    cfg = _config(tmp_path, MINI_CONFIG, 'mini.yaml')
    result = _launch('--cfg', cfg, '--batch-size', '8', '--data-path', data, '--output', str(tmp_path / 'tmp'),
                     '--resume', OFFICIAL_MINI, '--eval', '--model_ema', 'False')
    assert result.returncode == 0, result.stderr[-3000:]
    reported = float(result.stdout.split('Accuracy of the network on the 20 test images: ')[1].split('%')[0])
    assert 'EMA network' not in result.stdout  # --model_ema False: the model only

    # the same accuracy, computed here from the checkpoint's 'model' weights
    from classification.config import get_config
    from classification.data import build_transform, load_image
    from classification.engine.build import build_model
    from classification.models import load_checkpoint
    config = get_config(SimpleNamespace(cfg=cfg, opts=None))
    model = build_model(config).eval()
    model.load_state_dict(load_checkpoint(OFFICIAL_MINI)['model'], strict=True)
    transform = build_transform(config, is_training=False)
    with torch.no_grad():
        correct = sum(int(model(transform(load_image(os.path.join(data, 'val', name, f'{i}.png')))[None]).argmax(1)
                          == label) for label, name in enumerate(classes) for i in range(2))
    assert reported == pytest.approx(100.0 * correct / 20, abs=1e-3)

    # classification/throughput_test.sh's command (its --batch-size 128 here 8)
    timed = _launch('--cfg', cfg, '--batch-size', '8', '--throughput', '--data-path', data, '--output',
                    str(tmp_path / 'output' / 'test'), '--model_ema', 'False', '--amp-opt-level', 'O0')
    assert timed.returncode == 0, timed.stderr[-3000:]
    assert re.search(r'batch_size 8 throughput [\d.]+ images/s', timed.stdout)
    assert 'apex amp is deprecated' in timed.stdout + timed.stderr


def test_every_official_flag_is_accepted_with_its_meaning(tmp_path):
    from classification.config import get_config
    from classification.main import parse_args
    args = parse_args(['--cfg', _config(tmp_path), '--batch-size', '4', '--data-path', 'D', '--zip', '--cache-mode',
                       'full', '--pretrained', 'p.pth', '--resume', 'r.pth', '--accumulation-steps', '2',
                       '--use-checkpoint', '--amp-opt-level', 'O0', '--output', 'out', '--tag', 't', '--eval',
                       '--fused_layernorm', '--optim', 'sgd', '--model_ema', 'False', '--model_ema_decay', '0.99',
                       '--model_ema_force_cpu', 'True', '--local_rank', '0'])
    config = get_config(args)
    assert (config.DATA.ZIP_MODE, config.DATA.CACHE_MODE, config.MODEL.PRETRAINED, config.MODEL.RESUME) == \
        (True, 'full', 'p.pth', 'r.pth')
    assert (config.TRAIN.ACCUMULATION_STEPS, config.TRAIN.USE_CHECKPOINT, config.AMP_ENABLE, config.EVAL_MODE) == \
        (2, True, False, True)
    assert (config.FUSED_LAYERNORM, config.TRAIN.OPTIMIZER.NAME, config.MODEL_EMA, config.MODEL_EMA_DECAY,
            config.MODEL_EMA_FORCE_CPU) == (True, 'sgd', False, 0.99, True)
    assert config.OUTPUT == os.path.join('out', 'tiny', 't')
    assert get_config(parse_args(['--cfg', _config(tmp_path), '--amp-opt-level', 'O1'])).AMP_ENABLE
    with pytest.raises(SystemExit) as exit_info:
        parse_args(['--cfg', 'x.yaml', '--no-such-flag'])
    assert exit_info.value.code == 2
    # the official config's keys, with their official values
    official_keys = ('DATA.ZIP_MODE True DATA.CACHE_MODE no TRAIN.LR_SCHEDULER.NAME step '
                     'TRAIN.LR_SCHEDULER.DECAY_EPOCHS 3 TRAIN.LR_SCHEDULER.DECAY_RATE 0.5 '
                     'TRAIN.LR_SCHEDULER.MULTISTEPS [2,4] TRAIN.OPTIMIZER.MOMENTUM 0.8 TRAIN.LAYER_DECAY 1.0 '
                     'TEST.SEQUENTIAL True MODEL.VHEAT.PATCH_NORM True FUSED_WINDOW_PROCESS False ENABLE_AMP False '
                     'AMP_OPT_LEVEL O2 TRAIN.MOE.SAVE_MASTER False').split()
    assert get_config(SimpleNamespace(cfg=_config(tmp_path), opts=official_keys)).TRAIN.LR_SCHEDULER.DECAY_RATE == 0.5


def test_fused_optimizers_without_apex_and_unknown_schedules_are_one_line_errors(tmp_path):
    cfg = _config(tmp_path)
    main_error(['--cfg', cfg, '--optim', 'fused_lamb'], "--optim (TRAIN.OPTIMIZER.NAME) 'fused_lamb' needs NVIDIA apex")
    main_error(['--cfg', cfg, '--opts', 'TRAIN.LR_SCHEDULER.NAME', 'exponential'], 'TRAIN.LR_SCHEDULER.NAME')
    main_error(['--cfg', cfg, '--opts', 'TRAIN.LR_SCHEDULER.NAME', 'multistep'], 'TRAIN.LR_SCHEDULER.MULTISTEPS')


@pytest.mark.parametrize('name', ['step', 'multistep', 'linear'])
def test_official_schedules_give_the_official_learning_rates(name, tmp_path):
    """The rates the official schedulers (classification/utils/lr_scheduler.py) give, from their formulas: 10
    updates per epoch, 2 warm-up epochs, 12 epochs."""
    from classification.config import get_config
    from classification.engine.optim import build_scheduler
    opts = ['TRAIN.EPOCHS', '12', 'TRAIN.WARMUP_EPOCHS', '2', 'TRAIN.BASE_LR', '0.1', 'TRAIN.WARMUP_LR', '0.001',
            'TRAIN.LR_SCHEDULER.NAME', name, 'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '4', 'TRAIN.LR_SCHEDULER.DECAY_RATE',
            '0.5', 'TRAIN.LR_SCHEDULER.MULTISTEPS', '[5, 8]', 'TRAIN.LR_SCHEDULER.GAMMA', '0.2']
    config = get_config(SimpleNamespace(cfg=_config(tmp_path), opts=opts))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(config, optimizer, batches_per_epoch=10)

    def official(t):
        if t < 20:
            return 0.001 + t * (0.1 - 0.001) / 20
        if name == 'step':
            return 0.1 * 0.5 ** (t // 40)
        if name == 'multistep':
            return 0.1 * 0.2 ** sum(1 for m in (50, 80) if m <= t)
        return 0.1 - (0.1 - 0.1 * 0.01) * (t - 20) / (120 - 20)

    for t in (0, 7, 19, 20, 39, 40, 49, 50, 51, 79, 80, 81, 100, 119):
        scheduler.step_update(t)
        assert optimizer.param_groups[0]['lr'] == pytest.approx(official(t), rel=1e-9), t


def _weights_and_accuracy(out_dir):
    checkpoint = torch.load(os.path.join(out_dir, 'ckpt_latest.pth'), weights_only=True)
    return checkpoint['model'], json.load(open(os.path.join(out_dir, 'result.json')))


def test_zip_layout_trains_as_the_folder_with_every_cache_mode(tmp_path):
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 8, 4)
    zipped = tmp_path / 'zip'
    converted = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'dataset_converters', 'folder_to_zip.py'),
                                data, str(zipped)], env=env(), capture_output=True, text=True, timeout=120)
    assert converted.returncode == 0, converted.stderr
    assert sorted(os.listdir(zipped)) == ['train.zip', 'train_map.txt', 'val.zip', 'val_map.txt']
    assert (zipped / 'train_map.txt').read_text().splitlines()[0] == 'a/0.png\t0'
    cfg = _config(tmp_path)
    common = ['--cfg', cfg, '--opts', 'TRAIN.EPOCHS', '1']
    _train_in_process('--data-path', data, '--output', str(tmp_path / 'folder'), *common)
    folder = _weights_and_accuracy(tmp_path / 'folder' / 'tiny' / 'default')
    for mode in ('no', 'full'):
        _train_in_process('--data-path', str(zipped), '--zip', '--cache-mode', mode, '--output',
                          str(tmp_path / mode), *common)
        weights, accuracy = _weights_and_accuracy(tmp_path / mode / 'tiny' / 'default')
        assert accuracy == folder[1], mode
        assert all(torch.equal(weights[k], v) for k, v in folder[0].items()), mode
        log = (tmp_path / mode / 'tiny' / 'default' / 'log_rank0.txt').read_text()
        assert f'rank 0: {24 if mode == "full" else 0} of 24 train images held in memory' in log

    # part: each of 2 ranks holds and trains on its own shard, as a folder run with DATA.RANK_SHARDS does
    def two_processes(*args, opts=()):
        spawn = ['-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
                 f'--master_port={free_port()}']
        result = subprocess.run([sys.executable, *spawn, MAIN, *args, *common, *opts], env=env(), cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    two_processes('--data-path', data, '--output', str(tmp_path / 'shards'), opts=('DATA.RANK_SHARDS', 'True'))
    two_processes('--data-path', str(zipped), '--zip', '--cache-mode', 'part', '--output', str(tmp_path / 'part'))
    shards = _weights_and_accuracy(tmp_path / 'shards' / 'tiny' / 'default')
    part = _weights_and_accuracy(tmp_path / 'part' / 'tiny' / 'default')
    assert part[1] == shards[1]
    assert all(torch.equal(part[0][k], v) for k, v in shards[0].items())
    for rank in range(2):
        log = (tmp_path / 'part' / 'tiny' / 'default' / f'log_rank{rank}.txt').read_text()
        assert f'rank {rank}: 12 of 24 train images held in memory' in log
        assert f'rank {rank}: 6 of 12 val images held in memory' in log


def test_bad_zip_data_is_a_one_line_error_naming_file_and_line(tmp_path):
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 2, 1)
    zipped = tmp_path / 'zip'
    folder_to_zip.main([data, str(zipped)])
    cfg = _config(tmp_path)
    args = ['--cfg', cfg, '--data-path', str(zipped), '--zip', '--output', str(tmp_path / 'out')]
    lines = (zipped / 'train_map.txt').read_text().splitlines()
    (zipped / 'train_map.txt').write_text('\n'.join(lines[:2] + ['a/missing.png\t0'] + lines[2:]) + '\n')
    main_error(args, f'{zipped}/train_map.txt line 3: a/missing.png is not in {zipped}/train.zip')
    (zipped / 'train_map.txt').write_text('\n'.join(lines[:4] + ['b/0.png\t7']) + '\n')
    main_error(args, f'{zipped}/train_map.txt line 5: label 7 is out of range for MODEL.NUM_CLASSES 3')
    (zipped / 'train_map.txt').write_text('a/0.png 0\n')
    main_error(args, f'{zipped}/train_map.txt line 1: expected "relative/path<TAB>label"')
    (zipped / 'val.zip').write_bytes(b'not a zip at all')
    main_error(args, f'{zipped}/val.zip is not a readable zip file')


def _thousand_class_checkpoint(path, official=True):
    """A 1000-class checkpoint of TINY_CONFIG's network: the official trainer's layout (or ours)."""
    from classification.models import vHeat
    torch.manual_seed(5)
    model = vHeat(dims=8, depths=[1, 1, 1, 1], img_size=32, num_classes=1000)
    state = to_official(model.state_dict(), [1, 1, 1, 1]) if official else model.state_dict()
    torch.save({'model': state, 'model_ema': state, 'epoch': 299, 'config': CfgNode({'TAG': 'x'})}, path)
    return model.state_dict()


def _fine_tuned(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt_epoch_0.pth'), weights_only=True)


def test_pretrained_into_another_number_of_classes_from_a_file_and_a_url(tmp_path, offline, monkeypatch):
    data = make_folder(tmp_path / 'data', list('abcdefghij'), 2, 1)  # 10 classes
    cfg = _config(tmp_path, TINY_CONFIG.replace('BASE_LR: 0.256', 'BASE_LR: 1.0e-9'))  # the weights stay put
    source = _thousand_class_checkpoint(tmp_path / 'in1k.pth')
    common = ['--cfg', cfg, '--data-path', data, '--opts', 'MODEL.NUM_CLASSES', '10', 'TRAIN.EPOCHS', '1',
              'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.WARMUP_LR', '0.0', 'TRAIN.MIN_LR', '0.0']
    _train_in_process('--pretrained', str(tmp_path / 'in1k.pth'), '--output', str(tmp_path / 'file'), *common)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    os.replace(tmp_path / 'in1k.pth', cache / 'vHeat_in1k.pth')
    _train_in_process('--pretrained', 'https://example.org/releases/vHeat_in1k.pth', '--output',
                      str(tmp_path / 'url'), *common)
    for run in ('file', 'url'):
        out_dir = tmp_path / run / 'tiny' / 'default'
        weights = _fine_tuned(out_dir)['model']
        assert weights['head.fc.weight'].shape == (10, 64)
        assert all((weights[k] - v).abs().max() <= 1e-6 for k, v in source.items() if not k.startswith('head.fc.'))
        assert 're-initialised for 10 classes' in (out_dir / 'log_rank0.txt').read_text()
    # a URL not in the cache, offline: one line naming the URL and where to put the file
    main_error(['--pretrained', 'https://example.org/releases/other.pth', '--output', str(tmp_path / 'o'), *common],
               'cannot download https://example.org/releases/other.pth',
               f'put the file at {cache}/other.pth')


def _official_training_state(model, epoch):
    """The official trainer's checkpoint of ``model`` after a few AdamW steps of its own grouping."""
    from timm.scheduler import CosineLRScheduler
    official = to_official(model.state_dict(), model.depths)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in official.items()}
    decay, no_decay = official_param_groups(official)
    optimizer = torch.optim.AdamW([{'params': [params[k] for k in decay]},
                                   {'params': [params[k] for k in no_decay], 'weight_decay': 0.}], lr=1e-3)
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    scheduler = CosineLRScheduler(optimizer, t_initial=2, warmup_t=3, warmup_lr_init=1e-4, t_in_epochs=False,
                                  warmup_prefix=True)
    return {'model': official, 'model_ema': official, 'optimizer': optimizer.state_dict(),
            'lr_scheduler': scheduler.state_dict(), 'max_accuracy': 40.0, 'scaler': {'scale': 65536.0},
            'epoch': epoch, 'config': CfgNode({'TAG': 'default'}), 'max_accuray_ema': 41.0}


def test_an_official_training_checkpoint_resumes_with_its_optimizer_state(tmp_path):
    from classification.config import get_config
    from classification.engine.build import build_model
    from classification.engine.checkpoint import official_optimizer_state
    from classification.engine.optim import build_optimizer
    cfg = _config(tmp_path)
    config = get_config(SimpleNamespace(cfg=cfg, opts=None))
    model = build_model(config)
    state = _official_training_state(model, epoch=0)
    optimizer = build_optimizer(config, model)
    mapped = official_optimizer_state(state, model, optimizer, 'ckpt')
    optimizer.load_state_dict(mapped)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group['params']:
            name = _official_key(names[id(param)], model.depths)[1]
            expected = state['optimizer']['state'][_official_index(state, name)]['exp_avg']
            assert torch.equal(optimizer.state[param]['exp_avg'], expected.reshape(param.shape)), name

    # the trainer continues the official run found in its output folder (auto-resume): epoch 1 of 2
    data = make_folder(tmp_path / 'data', ['a', 'b', 'c'], 4, 1)
    out_dir = tmp_path / 'out' / 'tiny' / 'default'
    out_dir.mkdir(parents=True)
    torch.save(state, out_dir / 'ckpt_epoch_0.pth')
    torch.save(state, out_dir / 'ckpt_epoch_best.pth')  # the official trainer's best: not a state to continue
    _train_in_process('--cfg', cfg, '--data-path', data, '--output', str(tmp_path / 'out'))
    log = (out_dir / 'log_rank0.txt').read_text()
    assert f'auto-resuming from {out_dir}/ckpt_epoch_0.pth' in log and 'start training from epoch 1 to 2' in log
    final = torch.load(out_dir / 'ckpt_latest.pth', weights_only=True)
    assert final['epoch'] == 1 and final['max_accuracy_ema'] >= 41.0

    # another model's official state cannot be mapped: one line, pointing to --pretrained
    other = build_model(get_config(SimpleNamespace(cfg=cfg, opts=['MODEL.VHEAT.DEPTHS', '[1, 1, 2, 1]'])))
    path = tmp_path / 'other.pth'
    torch.save(dict(_official_training_state(other, epoch=0), model=state['model'], model_ema=state['model']), path)
    main_error(['--cfg', cfg, '--data-path', data, '--output', str(tmp_path / 'o2'), '--resume', str(path)],
               'its optimizer state cannot be matched', f'use --pretrained {path}')


def _official_index(state, official_name):
    decay, no_decay = official_param_groups(state['model'])
    groups = state['optimizer']['param_groups']
    return dict(zip(decay + no_decay, groups[0]['params'] + groups[1]['params']))[official_name]
