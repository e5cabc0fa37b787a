import os
import socket
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')

# The files whose tests run training jobs, clusters and compilers in subprocesses, longest first (about 280, 270,
# 120, 110, 100, 80 and 60 s of one worker in tools/test.sh). They start first, so that the workers of
# ``--dist loadfile --no-loadscope-reorder`` finish together instead of one waiting for the other's last long file.
LONG_FILES = ('test_downstream_runner.py', 'test_slurm.py', 'test_export.py', 'test_faults.py', 'test_library.py',
              'test_recipe.py', 'test_trainer.py')


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: files keep their own order


def jit_script(module):
    """``torch.jit.script(module)``. TorchScript is deprecated since torch 2.14 (``torch.jit.script`` warns with a
    FutureWarning, silenced here: the deprecation is torch's, the check is ours); the models keep scripting as long
    as torch has it, and a torch without it skips the test."""
    if not hasattr(torch.jit, 'script'):
        pytest.skip(f'torch {torch.__version__} has no TorchScript')
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
        return torch.jit.script(module)


@pytest.fixture(scope='session')
def official_io():
    return torch.load(os.path.join(FIXTURES, 'official_vheat_mini_io.pt'))


@pytest.fixture(scope='session')
def official_checkpoint():
    from vheat import load_checkpoint
    return load_checkpoint(os.path.join(FIXTURES, 'official_vheat_mini.pth'))


@pytest.fixture
def offline(monkeypatch):
    """No socket can reach anything: name lookups and connections fail."""
    def refuse(*args, **kwargs):
        raise OSError('network access blocked by the test')
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)
