import os
import socket
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


@pytest.fixture(scope='session')
def official_io():
    return torch.load(os.path.join(FIXTURES, 'official_vheat_mini_io.pt'))


@pytest.fixture(scope='session')
def official_checkpoint():
    from classification.models import load_checkpoint
    return load_checkpoint(os.path.join(FIXTURES, 'official_vheat_mini.pth'))


@pytest.fixture
def offline(monkeypatch):
    """No socket can reach anything: name lookups and connections fail."""
    def refuse(*args, **kwargs):
        raise OSError('network access blocked by the test')
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)
