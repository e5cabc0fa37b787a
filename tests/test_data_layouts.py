"""ImageNet as the hub and clusters keep it: a generated folder written by tools/dataset_converters/folder_to_shards.py
as parquet files (and a save_to_disk folder) and as WebDataset shards. Parquet trains with the folder run's samples (the
same weights) and resumes mid-epoch exactly; the shards give every training image once per epoch across 2 ranks and
evaluation counts every image once; bad files are one line naming the file (and row or sample)."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import ROOT
from test_trainer import MAIN, TINY_CONFIG, env, free_port, main_error, main_ok, make_folder
from tools.dataset_converters import folder_to_shards


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    """One folder (3 classes, 16 training and 4 validation images each) and its parquet and WebDataset copies."""
    root = tmp_path_factory.mktemp('layouts')
    folder = make_folder(root / 'folder', ['a', 'b', 'c'], 16, 4)
    with contextlib.redirect_stdout(io.StringIO()):
        folder_to_shards.main([folder, str(root / 'parquet'), '--format', 'parquet', '--shard-size', '20'])
        folder_to_shards.main([folder, str(root / 'wds'), '--format', 'wds', '--shard-size', '12'])
    cfg = root / 'tiny.yaml'
    cfg.write_text(TINY_CONFIG.replace('PRINT_FREQ: 5', 'PRINT_FREQ: 1'))
    return dict(root=root, folder=folder, parquet=str(root / 'parquet'), wds=str(root / 'wds'), cfg=str(cfg))


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """datasets converts parquet files into its cache: one for this module, not the user's."""
    import datasets
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path_factory.getbasetemp() / 'hf_cache'))


def _train(layouts, dataset: str, path: str, output, *opts: str) -> dict:
    main_ok(['--cfg', layouts['cfg'], '--data-path', path, '--output', str(output), '--opts', 'DATA.DATASET', dataset,
             *opts])
    return torch.load(output / 'tiny' / 'default' / 'ckpt_epoch_1.pth', weights_only=True)


def _assert_same(a: dict, b: dict) -> None:
    for part in ('model', 'model_ema'):
        for key, value in a[part].items():
            assert torch.equal(b[part][key], value), f'{part}.{key}'


@pytest.fixture(scope='module')
def folder_run(layouts, tmp_path_factory):
    return _train(layouts, 'imagenet', layouts['folder'], tmp_path_factory.mktemp('folder_run'))


def test_tool_writes_the_hub_and_webdataset_layouts(layouts):
    files = sorted(os.listdir(os.path.join(layouts['parquet'], 'data')))
    assert files == ['train-00000-of-00003.parquet', 'train-00001-of-00003.parquet', 'train-00002-of-00003.parquet',
                     'validation-00000-of-00001.parquet']
    schema = pq.read_schema(os.path.join(layouts['parquet'], 'data', files[0]))
    assert json.loads(schema.metadata[b'huggingface'])['info']['features']['label'] == {
        'names': ['a', 'b', 'c'], '_type': 'ClassLabel'}
    info = json.load(open(os.path.join(layouts['wds'], '_info.json')))
    assert info['splits']['train']['shard_lengths'] == [12, 12, 12, 12]
    assert info['splits']['validation']['num_samples'] == 12
    with tarfile.open(os.path.join(layouts['wds'], 'train-000001.tar')) as archive:
        assert archive.getnames()[:2] == ['00000012.cls', '00000012.png']
    assert not [f for root, _, names in os.walk(layouts['root']) for f in names if f.endswith('.tmp')]


def test_parquet_trains_with_the_folder_runs_samples(layouts, folder_run, tmp_path):
    parquet = _train(layouts, 'hfds', layouts['parquet'], tmp_path)
    _assert_same(folder_run, parquet)
    assert parquet['classes'] == ['a', 'b', 'c']  # for tools/misc/predict.py, as for folders


def test_a_save_to_disk_folder_trains_like_its_parquet_files(layouts, folder_run, tmp_path):
    import datasets
    splits = datasets.load_dataset('parquet', data_dir=os.path.join(layouts['parquet'], 'data'))
    splits.save_to_disk(str(tmp_path / 'saved'))
    _assert_same(folder_run, _train(layouts, 'hfds', str(tmp_path / 'saved'), tmp_path / 'out'))


def _stopped_by_sigterm_at(monkeypatch, step: int):
    """A real SIGTERM to this process while the trainer takes step ``step`` (counting from 1) of epoch 1."""
    import classification.engine.stats as trainer
    add_loss = trainer.StepStats.add_loss
    calls = []

    def add_loss_then_signal(self, loss, index):
        calls.append(index)
        if len(calls) == 12 + step:  # 12 steps an epoch
            os.kill(os.getpid(), signal.SIGTERM)
        add_loss(self, loss, index)
    monkeypatch.setattr(trainer.StepStats, 'add_loss', add_loss_then_signal)


@contextlib.contextmanager
def _own_signal_handlers():
    """A run stopped by a signal ignores further ones until its process ends; here the process goes on."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _interrupted_then_resumed(layouts, dataset, path, output, monkeypatch):
    argv = ['--cfg', layouts['cfg'], '--data-path', path, '--output', str(output), '--opts', 'DATA.DATASET', dataset]
    with monkeypatch.context() as patch, _own_signal_handlers():
        _stopped_by_sigterm_at(patch, 5)
        import classification.main as trainer
        with pytest.raises(SystemExit) as stopped, contextlib.redirect_stdout(io.StringIO()):
            trainer.main(argv)
    assert stopped.value.code == 128 + signal.SIGTERM
    saved = torch.load(output / 'tiny' / 'default' / 'ckpt_latest.pth', weights_only=True)
    assert (saved['epoch'], saved['step']) == (1, 5)
    printed = main_ok(argv)
    return printed, torch.load(output / 'tiny' / 'default' / 'ckpt_epoch_1.pth', weights_only=True)


def test_parquet_resumes_mid_epoch_to_the_uninterrupted_weights(layouts, folder_run, tmp_path, monkeypatch):
    printed, resumed = _interrupted_then_resumed(layouts, 'hfds', layouts['parquet'], tmp_path, monkeypatch)
    assert 'resuming epoch 1 at step 5 of 12' in printed
    _assert_same(folder_run, resumed)


def test_shards_resume_a_stopped_epoch_from_its_start_and_say_so(layouts, tmp_path, monkeypatch):
    printed, _ = _interrupted_then_resumed(layouts, 'wds', layouts['wds'], tmp_path, monkeypatch)
    assert ('stopped at step 5 of epoch 1, but streamed shards cannot be entered mid-epoch: epoch 1 restarts at its '
            'first step (the 5 steps done before the stop are trained again)') in printed


def _images_seen(stream) -> list:
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.workers)
    return [bytes(image.numpy()) for images, _ in loader for image in images]


def test_shards_give_each_training_image_once_per_epoch_across_two_ranks(layouts):
    """2 ranks x 2 loader workers, batch 4: the union of what the ranks see in an epoch is the training set, each
    image once, and the ranks take the same number of steps; another epoch, another order."""
    from PIL import Image
    from torchvision.transforms import PILToTensor

    from classification.data.shards import ShardStream, split_shards
    shards, lengths, _ = split_shards(layouts['wds'], 'train', '')
    folder = os.path.join(layouts['folder'], 'train')
    everything = sorted(bytes(PILToTensor()(Image.open(os.path.join(folder, c, f)).convert('RGB')).numpy())
                        for c in sorted(os.listdir(folder)) for f in os.listdir(os.path.join(folder, c)))
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, lengths, 3, PILToTensor(), 4, True, 0, rank, 2, workers=2, shuffle_buffer=8)
        assert stream.batches_per_epoch == 6 and stream.images_left_out == 0
        epoch0 = _images_seen(stream)
        stream.set_epoch(1)
        epoch1 = _images_seen(stream)
        assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
        seen += epoch0
    assert len(seen) == 48 and sorted(seen) == everything


def test_uneven_shards_keep_the_ranks_in_step_and_say_what_is_left_out(layouts):
    from classification.data.shards import ShardStream, split_shards
    shards, lengths, _ = split_shards(layouts['wds'], 'train', 'train-{000000..000002}.tar')  # 3 shards, 2 ranks
    streams = [ShardStream(shards, lengths, 3, None, 4, True, 0, rank, 2, workers=1) for rank in range(2)]
    assert [s.batches_per_epoch for s in streams] == [3, 3] and streams[0].images_left_out == 12


def test_shards_evaluate_every_image_once_with_two_processes_as_the_folder_does(layouts, folder_run, tmp_path):
    checkpoint = tmp_path / 'trained.pth'
    torch.save(folder_run, checkpoint)
    logs = {}
    for dataset, path in (('imagenet', layouts['folder']), ('wds', layouts['wds'])):
        result = subprocess.run(
            [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
             f'--master_port={free_port()}', MAIN, '--cfg', layouts['cfg'], '--data-path', path, '--output',
             str(tmp_path / dataset), '--eval', '--resume', str(checkpoint), '--opts', 'DATA.DATASET', dataset,
             'DATA.NUM_WORKERS', '1', 'DATA.BATCH_SIZE', '5'], env=env(), cwd=ROOT, capture_output=True, text=True,
            timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[dataset] = [line.split('INFO ')[1] for line in result.stdout.splitlines() if '* model: Acc@1' in line or
                         'Accuracy of the network' in line]
    assert logs['wds'] == logs['imagenet'] and 'on the 12 test images' in logs['wds'][-1]


def _parquet_copy(layouts, tmp_path, **changes):
    """The parquet copy with its first training file rewritten: ``drop`` a column or set ``label`` of row 3."""
    copy = tmp_path / 'broken'
    os.makedirs(copy / 'data')
    for name in os.listdir(os.path.join(layouts['parquet'], 'data')):
        table = pq.read_table(os.path.join(layouts['parquet'], 'data', name))
        if name.startswith('train-00001'):
            if 'drop' in changes:
                table = table.drop_columns([changes['drop']])
            if 'label' in changes:
                labels = table.column('label').to_pylist()
                labels[3] = changes['label']
                table = table.set_column(table.schema.get_field_index('label'), 'label', pa.array(labels))
        pq.write_table(table, copy / 'data' / name)
    return str(copy), str(copy / 'data' / 'train-00001-of-00003.parquet')


def _argv(layouts, dataset, path, output):
    return ['--cfg', layouts['cfg'], '--data-path', path, '--output', str(output), '--opts', 'DATA.DATASET', dataset]


def test_bad_parquet_files_are_one_line_naming_the_file_and_row(layouts, tmp_path):
    path, broken = _parquet_copy(layouts, tmp_path / 'label', label=7)
    main_error(_argv(layouts, 'hfds', path, tmp_path), f'{broken} row 3: label 7 is out of range for '
               'MODEL.NUM_CLASSES 3 (0 to 2)')
    path, broken = _parquet_copy(layouts, tmp_path / 'column', drop='label')
    main_error(_argv(layouts, 'hfds', path, tmp_path), f"{broken}: no 'label' column (it has image)")
    path, broken = _parquet_copy(layouts, tmp_path / 'garbage')
    with open(broken, 'wb') as f:
        f.write(b'not parquet at all')
    main_error(_argv(layouts, 'hfds', path, tmp_path), f'{broken} is not a readable parquet file')
    assert not (tmp_path / 'tiny').exists() or not list((tmp_path / 'tiny').rglob('*.pth'))


def test_bad_shards_are_one_line_naming_the_shard_and_sample(layouts, tmp_path):
    copy = tmp_path / 'wds'
    os.makedirs(copy)
    for name in os.listdir(layouts['wds']):
        with open(os.path.join(layouts['wds'], name), 'rb') as f:
            (copy / name).write_bytes(f.read())
    data = (copy / 'train-000002.tar').read_bytes()
    (copy / 'train-000002.tar').write_bytes(data[:len(data) // 2])  # cut off in the middle of a member
    main_error(_argv(layouts, 'wds', str(copy), tmp_path / 'a'), f'{copy}/train-000002.tar: corrupt tar shard')
    (copy / 'train-000002.tar').write_bytes(data)
    with tarfile.open(copy / 'validation-000000.tar') as archive:
        image = archive.extractfile('00000000.png').read()

    def append(shard, *members):
        with tarfile.open(copy / shard, 'a') as archive:
            for name, content in members:
                member = tarfile.TarInfo(name)
                member.size = len(content)
                archive.addfile(member, io.BytesIO(content))
    last = (copy / 'train-000003.tar').read_bytes()
    append('train-000003.tar', ('00009998.png', image), ('00009998.cls', b'9'))
    main_error(_argv(layouts, 'wds', str(copy), tmp_path / 'b'), f"{copy}/train-000003.tar: sample 00009998: label "
               "'9' is out of range for MODEL.NUM_CLASSES 3 (0 to 2)")
    (copy / 'train-000003.tar').write_bytes(last)
    append('train-000001.tar', ('00009999.cls', b'1'))
    main_error(_argv(layouts, 'wds', str(copy), tmp_path / 'c'), f'{copy}/train-000001.tar: sample 00009999 has no '
               'image (.jpg, .jpeg, .png or .webp)')


def test_a_hub_name_without_network_is_one_line(layouts, tmp_path, offline, monkeypatch):
    import datasets
    import huggingface_hub
    for module in (datasets.config, huggingface_hub.constants):  # HF_HUB_OFFLINE=1, read at their import
        monkeypatch.setattr(module, 'HF_HUB_OFFLINE', True)
    main_error(_argv(layouts, 'hfds', 'ILSVRC/imagenet-1k', tmp_path), 'ILSVRC/imagenet-1k: not a local folder, and '
               'the Hugging Face hub could not provide it')


@pytest.mark.parametrize('opts', [[], ['DATA.IMG_SIZE', '32'], ['MODEL.VHEAT.IN_CHANS', '1']],
                         ids=['224', '32 px rule', 'one channel'])
def test_evaluation_normalised_on_the_batch_is_bit_exact(layouts, opts):
    """The validation loader's uint8 batches, normalised where the model is, hold the very values of per-image
    ToTensor + Normalize."""
    from types import SimpleNamespace

    from PIL import Image

    from classification.config import get_config
    from classification.data import BatchNormalize, build_transform
    config = get_config(SimpleNamespace(cfg=os.path.join(ROOT, 'classification/configs/vHeat/vHeat_tiny_224.yaml'),
                                        opts=opts))
    folder = os.path.join(layouts['folder'], 'val', 'a')
    mode = 'L' if opts[-1:] == ['1'] else 'RGB'
    images = [Image.open(os.path.join(folder, f)).convert(mode) for f in sorted(os.listdir(folder))]
    per_image = torch.stack([build_transform(config, False)(image) for image in images])
    uint8 = torch.stack([build_transform(config, False, normalize=False)(image) for image in images])
    assert uint8.dtype == torch.uint8 and torch.equal(BatchNormalize(config)(uint8), per_image)
