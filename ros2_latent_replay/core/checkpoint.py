r"""Crash-safe, verified checkpoint files.

Layout: a text header line ``ROS2LR-CKPT <format version> <sha256 of the payload>\\n``
followed by the payload, a ``torch.save`` archive of tensors, numbers, strings, lists and
dicts only. Saving writes a temporary file in the same directory, fsyncs it, renames it over
the target and fsyncs the directory, so a kill at any moment leaves either the old or the
new file, never a partial one. Loading checks the header and the digest before unpickling,
and unpickles with ``torch.load(weights_only=True)``, which refuses arbitrary objects: a
truncated, bit-flipped or code-carrying file raises :class:`CheckpointError`.
"""

import hashlib
import io
import os
import re
import tempfile
import warnings
from typing import Any, Dict

import torch

from .errors import CheckpointError

MAGIC = b'ROS2LR-CKPT'
FORMAT_VERSION = 1
_MAX_HEADER = 256


def dumps(state: Dict[str, Any]) -> bytes:
    """Serialise ``state`` with the verified header."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    return b'%s %d %s\n' % (MAGIC, FORMAT_VERSION, digest.encode()) + payload


def loads(blob: bytes, source: str = 'checkpoint') -> Dict[str, Any]:
    """Verify and deserialise bytes written by :func:`dumps`."""
    newline = blob.find(b'\n', 0, _MAX_HEADER)
    if newline < 0 or not blob.startswith(MAGIC + b' '):
        raise CheckpointError(f'{source} is not a ros2_latent_replay checkpoint '
                              f'(missing header)')
    try:
        _, version, digest = blob[:newline].split(b' ')
        version = int(version)
    except ValueError:
        raise CheckpointError(f'{source} has a malformed header') from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f'{source} has format version {version}; this build reads '
                              f'version {FORMAT_VERSION}')
    payload = blob[newline + 1:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f'{source} is truncated or corrupted (checksum mismatch, '
                              f'{len(payload)} payload bytes)')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')    # e.g. "Detected pickle protocol 4"
            state = torch.load(io.BytesIO(payload), map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: B902 - any unpickling failure is a refusal
        raise CheckpointError(f'{source} could not be read safely: {_refusal(exc)}; it was '
                              f'not loaded') from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{source} does not hold a state dictionary')
    return state


def _refusal(exc: Exception) -> str:
    """Return the reason of torch's weights-only refusal, without its advice to load unsafely."""
    text = str(exc)
    found = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)', text, re.S)
    if found:
        return (f'it holds something other than tensors, numbers, strings, lists and dicts '
                f'({found.group(1).strip()[:200]})')
    return f'{type(exc).__name__}: {text[:200]}'


def save_atomic(state: Dict[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    blob = dumps(state)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=directory)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_verified(path: str) -> Dict[str, Any]:
    """Read and verify a checkpoint file."""
    try:
        with open(path, 'rb') as handle:
            blob = handle.read()
    except FileNotFoundError:
        raise CheckpointError(f'state file {path} does not exist') from None
    except OSError as exc:
        raise CheckpointError(f'state file {path} cannot be read: {exc}') from None
    return loads(blob, source=f'state file {path}')


def remove_stale_temporaries(path: str) -> int:
    """Delete temp files a killed :func:`save_atomic` left next to ``path``; return count."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = '.' + os.path.basename(path) + '.'
    removed = 0
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith('.tmp'):
            try:
                os.unlink(os.path.join(directory, entry))
                removed += 1
            except OSError:
                pass
    return removed
