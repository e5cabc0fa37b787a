"""The 3-D demos' generated data, and each demo task end to end on a few samples."""
import pytest
import torch

from classification.data.volumes import DIRECTIONS, SHAPES, moving_digits, shape_volumes
from tools.misc import demo3d


def _centres(clips):
    """(clips, frames, 2) centre of mass (y, x) of each frame."""
    weights = clips[:, 0].clamp(min=0.2) - 0.2  # above the noise
    ys = torch.arange(clips.shape[-2], dtype=torch.float32)[:, None]
    xs = torch.arange(clips.shape[-1], dtype=torch.float32)[None, :]
    total = weights.sum((-2, -1))
    return torch.stack([(weights * ys).sum((-2, -1)) / total, (weights * xs).sum((-2, -1)) / total], -1)


def test_digits_move_in_their_labelled_direction_and_frames_alone_do_not_tell_it():
    clips, labels = moving_digits(64, seed=1)
    assert clips.shape == (64, 1, 8, 32, 32) and set(labels.tolist()) == set(range(len(DIRECTIONS)))
    motion = _centres(clips)[:, -1] - _centres(clips)[:, 0]
    expected = {'up': (-14, 0), 'down': (14, 0), 'left': (0, -14), 'right': (0, 14)}
    for label, move in zip(labels.tolist(), motion):
        assert torch.allclose(move, torch.tensor(expected[DIRECTIONS[label]], dtype=torch.float32), atol=0.5)
    # the same digit and path run backwards is a clip of the opposite direction: only the order of frames differs
    up = clips[labels == DIRECTIONS.index('up')][0]
    assert torch.allclose(_centres(up.flip(1)[None])[0, -1] - _centres(up.flip(1)[None])[0, 0],
                          torch.tensor([14.0, 0.0]), atol=0.5)


def test_shape_volumes_hold_their_shape_in_their_mask():
    volumes, labels, masks = shape_volumes(40, seed=2)
    assert volumes.shape == (40, 1, 32, 32, 32) and masks.shape == (40, 32, 32, 32)
    assert set(labels.tolist()) == set(range(len(SHAPES)))
    for volume, mask in zip(volumes[:, 0], masks.bool()):
        assert 50 < mask.sum() < 0.3 * mask.numel()
        assert volume[mask].mean() > volume[~mask].mean() + 0.5  # the shape stands out of the noise


@pytest.mark.parametrize('task', ['video', 'volume', 'segment'])
def test_demo_task_runs(task, tmp_path):
    result = demo3d.main(['--task', task, '--train', '16', '--test', '8', '--epochs', '1', '--batch', '8',
                          '--json', str(tmp_path / 'demo.json')])
    assert result['task'] == task and result['results']
    for run in result['results'].values():
        assert run['epochs'] == 1 and run['steps'] == 2
        metric = run.get('test_accuracy', run.get('test_mean_dice'))
        assert metric is not None
    assert task in (tmp_path / 'demo.json').read_text()


def test_dice_counts_overlap():
    logits = torch.zeros(2, 2, 4, 4, 4)
    logits[0, 1, :2] = 1  # half the volume predicted
    masks = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    masks[0, :2] = 1      # exactly that half is true
    masks[1, :1] = 1      # nothing predicted: no overlap
    assert demo3d.dice(logits, masks).tolist() == [1.0, 0.0]
