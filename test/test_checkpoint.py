"""Checkpoint files: atomic writes, verified reads, hostile files refused without running code."""

import hashlib
import io
import os

import pytest
import torch

from ros2_latent_replay.core import checkpoint
from ros2_latent_replay.core.errors import CheckpointError


class _RunsCode:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _state():
    return {'weights': torch.arange(10.0), 'names': ['mug', 'ball'], 'steps': 3,
            'nested': {'x': torch.ones(2, 2, dtype=torch.float16)}}


def test_round_trip(tmp_path):
    path = str(tmp_path / 'state.pt')
    checkpoint.save_atomic(_state(), path)
    loaded = checkpoint.load_verified(path)
    assert torch.equal(loaded['weights'], torch.arange(10.0))
    assert loaded['names'] == ['mug', 'ball'] and loaded['steps'] == 3
    assert [p for p in os.listdir(tmp_path) if p.endswith('.tmp')] == []


def test_truncated_and_bit_flipped_files_are_refused(tmp_path):
    path = tmp_path / 'state.pt'
    checkpoint.save_atomic(_state(), str(path))
    blob = path.read_bytes()
    for cut in (10, len(blob) // 2, len(blob) - 1):
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError):
            checkpoint.load_verified(str(path))
    flipped = bytearray(blob)
    flipped[len(blob) - 40] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match='checksum'):
        checkpoint.load_verified(str(path))
    path.write_bytes(b'')
    with pytest.raises(CheckpointError):
        checkpoint.load_verified(str(path))
    with pytest.raises(CheckpointError, match='does not exist'):
        checkpoint.load_verified(str(tmp_path / 'missing.pt'))


def test_code_carrying_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / 'pwned'
    buffer = io.BytesIO()
    torch.save({'weights': _RunsCode(str(marker))}, buffer)
    payload = buffer.getvalue()
    # an attacker who knows the format recomputes the digest: the unpickler must still refuse
    digest = hashlib.sha256(payload).hexdigest().encode()
    blob = b'%s %d %s\n' % (checkpoint.MAGIC, checkpoint.FORMAT_VERSION, digest) + payload
    path = tmp_path / 'evil.pt'
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match='could not be read safely'):
        checkpoint.load_verified(str(path))
    assert not marker.exists()
    # a plain torch.save file (no header) is refused too
    torch.save({'weights': torch.ones(1)}, str(path))
    with pytest.raises(CheckpointError, match='missing header'):
        checkpoint.load_verified(str(path))


def test_stale_temporaries_are_removed(tmp_path):
    path = tmp_path / 'state.pt'
    (tmp_path / '.state.pt.abc123.tmp').write_bytes(b'partial')
    (tmp_path / 'other.tmp').write_bytes(b'not ours')
    assert checkpoint.remove_stale_temporaries(str(path)) == 1
    assert sorted(os.listdir(tmp_path)) == ['other.tmp']
