"""The replay memory: a fixed-capacity store of encoded latents in one shared-memory segment.

Layout of the segment (all offsets 64-byte aligned, native byte order)::

    header   16 x int64: magic, layout version, storage code, capacity, C, H, W, fill,
             owner pid, owner pid-namespace id, write generation, segment bytes, reserved
    labels   int32 [capacity]
    data     [capacity, C, H, W] in the storage dtype (float32, float16 or uint8)
    scale    float32 [capacity, C]   (uint8 storage only, see latent_codec)
    offset   float32 [capacity, C]   (uint8 storage only)

Consistency across processes (seqlock)
    The owner is the only writer. Every change bumps the header's generation counter to an
    odd value, writes, then bumps it to the next even value. A reader copies what it needs
    between two reads of the counter and keeps the copy only when both reads are equal and
    even; otherwise it retries (with a short sleep) for up to ``READ_RETRY_SECONDS`` and then
    raises BusyError. Within one process a lock serialises the writer and readers. The
    check relies on stores becoming visible to other cores in program order, which x86-64
    guarantees; Python offers no memory fence, so on weakly ordered CPUs (ARM) a torn read
    is unlikely but not excluded.

Lifetime of the segment
    * The creating process (the *owner*) uses ``multiprocessing.shared_memory.SharedMemory``,
      which registers the segment with the process's resource tracker. ``close()`` (or the
      context manager, garbage collection, or interpreter exit via ``weakref.finalize``,
      which also covers an uncaught exception or Ctrl-C) unlinks it. If the owner is killed
      (SIGTERM, even SIGKILL of the owner alone) the resource tracker, a separate helper
      process, sees its pipe close and unlinks the segment (with a "leaked shared_memory
      objects" warning on stderr).
    * Attaching must not register: Python 3.11's ``SharedMemory(name)`` registers attached
      segments too, so the attaching process's tracker would unlink the segment when *that*
      process exits, and unregistering afterwards would also drop the owner's registration
      whenever both share one tracker (same process, or multiprocessing children that
      inherit it). ``attach()`` therefore maps ``/dev/shm/<name>`` itself, read-only, without
      involving any tracker (Python >= 3.13: ``SharedMemory(name, track=False)`` where there
      is no ``/dev/shm``; older Pythons there fall back to attaching and unregistering).
    * When the owner *and* its tracker are killed (SIGKILL of the process group, the OOM
      killer, a stopped container) nothing unlinks the segment. ``cleanup_stale_segments()``,
      which every constructor calls first, removes segments named with our prefix whose
      owner pid (from the header, else from the ``ros2lr_<pid>_<random>`` name) is no longer
      alive (zombies count as dead). Segments recorded in another pid namespace (a container
      sharing /dev/shm) are left alone, since their pids mean nothing here. A pid reused by
      an unrelated process keeps a stale segment until that process ends.

Space is reserved up front with ``posix_fallocate`` where available, so a ``/dev/shm`` too
small for the capacity (Docker's default is 64 MB) fails at construction with ConfigError
instead of a SIGBUS on a later write.
"""

import mmap
import os
import secrets
import sys
import threading
import time
import weakref
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import latent_codec
from .errors import BusyError, CheckpointError, ConfigError, InputError

NAME_PREFIX = 'ros2lr_'
SHM_DIR = '/dev/shm'
LAYOUT_VERSION = 1
MAGIC = int.from_bytes(b'ROS2LRMB', 'little')
READ_RETRY_SECONDS = 2.0
_MAX_NAME_LENGTH = 200
_ALIGN = 64
_LABEL_MAX = np.iinfo(np.int32).max

# header slots (int64 each)
_H_MAGIC, _H_VERSION, _H_STORAGE, _H_CAPACITY = 0, 1, 2, 3
_H_C, _H_H, _H_W, _H_FILL, _H_PID, _H_PIDNS, _H_GEN, _H_NBYTES = 4, 5, 6, 7, 8, 9, 10, 11
_HEADER_SLOTS = 16
_HEADER_BYTES = _HEADER_SLOTS * 8

_STATE_LAYOUT_KEYS = ('version', 'storage', 'capacity', 'C', 'H', 'W')


def _align(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _layout(capacity: int, latent_shape: Tuple[int, int, int], storage: str
            ) -> Tuple[Dict[str, Tuple[int, np.dtype, Tuple[int, ...]]], int]:
    """Offsets of every array in the segment: ``{name: (offset, dtype, shape)}``, total."""
    arrays = {'labels': (_HEADER_BYTES, np.dtype(np.int32), (capacity,))}
    end = _HEADER_BYTES + 4 * capacity
    for field, (dtype, row) in latent_codec.record_fields(storage, latent_shape).items():
        offset = _align(end)
        shape = (capacity,) + tuple(row)
        arrays[field] = (offset, dtype, shape)
        end = offset + dtype.itemsize * int(np.prod(shape))
    return arrays, _align(end)


def _pid_namespace() -> int:
    """Inode of this process's pid namespace (0 when unknown)."""
    try:
        return os.stat('/proc/self/ns/pid').st_ino
    except OSError:
        return 0


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (non-zombie) process in this pid namespace."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True            # exists, owned by another user
    try:
        with open(f'/proc/{pid}/stat', 'rb') as stat:
            state = stat.read().rsplit(b')', 1)[1].split()[0]
        return state not in (b'Z', b'X')
    except (OSError, IndexError):
        return True


def _owner_from_name(name: str, prefix: str) -> Optional[int]:
    head = name[len(prefix):].split('_', 1)[0]
    return int(head) if head.isdigit() else None


def _read_header(path: str) -> Optional[np.ndarray]:
    """Header of a segment file when it carries our magic, else None."""
    try:
        with open(path, 'rb') as segment:
            raw = segment.read(_HEADER_BYTES)
    except OSError:
        return None
    if len(raw) < _HEADER_BYTES:
        return None
    header = np.frombuffer(raw, dtype=np.int64)
    return header if int(header[_H_MAGIC]) == MAGIC else None


def cleanup_stale_segments(prefix: str = NAME_PREFIX) -> List[str]:
    """Unlink ``/dev/shm`` segments named ``prefix*`` whose owner process is gone.

    The owner pid comes from the segment header; for a segment without a valid header
    (its creator died within microseconds of creating it) from the ``<prefix><pid>_...``
    name, and then only once the segment is a minute old. Segments recorded in another pid
    namespace, segments of live owners and anything that cannot be read or removed are
    left alone. Returns the names removed (empty where there is no ``/dev/shm``).
    """
    if not isinstance(prefix, str) or not prefix or '/' in prefix:
        raise InputError(f'segment prefix must be a non-empty name without "/", got {prefix!r}')
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except OSError:
        return []
    namespace = _pid_namespace()
    removed = []
    for name in entries:
        if not name.startswith(prefix):
            continue
        path = os.path.join(SHM_DIR, name)
        header = _read_header(path)
        if header is not None:
            if int(header[_H_PIDNS]) != namespace:
                continue
            pid = int(header[_H_PID])
        else:
            pid = _owner_from_name(name, prefix)
            try:
                young = time.time() - os.stat(path).st_mtime < 60.0
            except OSError:
                continue
            if pid is None or young:
                continue
        if _pid_alive(pid):
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(name)
    return removed


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or '/' in name or '\0' in name \
            or len(name) > _MAX_NAME_LENGTH or name in ('.', '..'):
        raise InputError(
            f'shared-memory name must be a non-empty string of at most {_MAX_NAME_LENGTH} '
            f'characters without "/", got {name!r}')
    return name


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not low <= value <= high:
        raise InputError(f'{what} must be an integer in [{low}, {high}], got {value!r}')
    return int(value)


def _as_index_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f'{what} must be a 1-D integer array, got shape {array.shape}')
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in 'iu':
        raise InputError(f'{what} must hold integers, got dtype {array.dtype}')
    return array.astype(np.int64)


def _unregister(internal_name: str) -> None:
    try:
        resource_tracker.unregister(internal_name, 'shared_memory')
    except Exception:  # noqa: B902 - the tracker may be gone at interpreter exit
        pass


def _unlink_owned(shm: SharedMemory) -> None:
    try:
        shm.unlink()                      # also unregisters it from the resource tracker
    except FileNotFoundError:
        _unregister(shm._name)            # someone else removed the name already


class _Mapping:
    """The numpy views on one mapped segment and what backs them.

    Kept apart from :class:`SharedReplayBuffer` so that ``weakref.finalize`` can drop the
    views before closing the mapping (a mapping with live views cannot be closed) without
    holding a reference to the buffer object itself.
    """

    def __init__(self, buf: Any, arrays: Dict[str, Tuple[int, np.dtype, Tuple[int, ...]]],
                 shm: Optional[SharedMemory], mapping: Optional[mmap.mmap],
                 unlink_pid: Optional[int]) -> None:
        self.header: Optional[np.ndarray] = np.frombuffer(
            buf, dtype=np.int64, count=_HEADER_SLOTS)
        self.arrays: Dict[str, np.ndarray] = {}
        for key, (offset, dtype, shape) in arrays.items():
            self.arrays[key] = np.frombuffer(
                buf, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
        self.shm = shm
        self.mapping = mapping
        self.unlink_pid = unlink_pid       # owner's pid: unlink on release from that pid only

    def release(self) -> None:
        """Drop the views, close the mapping and, for the owner, unlink the segment."""
        self.header = None
        self.arrays = {}
        if self.shm is not None:
            try:
                self.shm.close()
            except BufferError:            # a view escaped somewhere; the OS frees it later
                pass
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                pass
        self.unlink()

    def unlink(self) -> None:
        """Unlink the segment when this is the owner's mapping in the owner's process."""
        if self.shm is not None and self.unlink_pid == os.getpid():
            self.unlink_pid = None
            _unlink_owned(self.shm)


class SharedReplayBuffer:
    """Fixed-capacity replay memory of encoded latents and int32 labels in shared memory.

    Create it in the learner's process (the owner, the only writer); other processes
    :meth:`attach` by name and read. ``fill`` patterns occupy slots ``0 .. fill - 1``.
    """

    def __init__(self, capacity: int, latent_shape: Tuple[int, int, int],
                 storage: str = 'uint8', name: Optional[str] = None) -> None:
        """Create a new segment; ``name`` None gives ``ros2lr_<pid>_<random>``."""
        capacity = _check_int(capacity, 'replay capacity', 0, 100_000_000)
        shape = latent_codec.check_latent_shape(latent_shape)
        storage = latent_codec.check_storage(storage)
        if name is not None:
            _check_name(name)
        arrays, nbytes = _layout(capacity, shape, storage)
        cleanup_stale_segments()
        shm = self._create_segment(name, nbytes)
        try:
            self._reserve(shm, nbytes)
        except BaseException:
            shm.close()
            _unlink_owned(shm)
            raise
        self._init_common(shm.name, _Mapping(shm.buf, arrays, shm, None, os.getpid()),
                          capacity, shape, storage, nbytes, owner=True)
        hdr = self._seg.header
        hdr[_H_VERSION] = LAYOUT_VERSION
        hdr[_H_STORAGE] = latent_codec.STORAGE_CODES[storage]
        hdr[_H_CAPACITY] = capacity
        hdr[_H_C], hdr[_H_H], hdr[_H_W] = shape
        hdr[_H_FILL] = 0
        hdr[_H_PID] = os.getpid()
        hdr[_H_PIDNS] = _pid_namespace()
        hdr[_H_GEN] = 0
        hdr[_H_NBYTES] = nbytes
        hdr[_H_MAGIC] = MAGIC             # last: the header is complete once this is set

    @staticmethod
    def _create_segment(name: Optional[str], nbytes: int) -> SharedMemory:
        while True:
            candidate = name or f'{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(6)}'
            try:
                return SharedMemory(name=candidate, create=True, size=nbytes)
            except FileExistsError:
                if name is not None:
                    raise InputError(
                        f'a shared-memory segment named {name!r} already exists; pick '
                        'another name or remove the old one') from None
            except OSError as exc:
                raise ConfigError(
                    f'cannot create a {nbytes}-byte shared-memory segment ({exc}): lower the '
                    "replay capacity or use 'uint8' storage") from None

    @staticmethod
    def _reserve(shm: SharedMemory, nbytes: int) -> None:
        """Allocate the segment's pages now so a full /dev/shm fails here, not later."""
        path = os.path.join(SHM_DIR, shm.name)
        if not hasattr(os, 'posix_fallocate') or not os.path.exists(path):
            return
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            try:
                free = os.statvfs(SHM_DIR)
                free_bytes = free.f_bavail * free.f_frsize
            except OSError:
                free_bytes = -1
            raise ConfigError(
                f'cannot reserve {nbytes} bytes of shared memory in {SHM_DIR} '
                f'({exc.strerror}; {free_bytes} bytes free): lower the replay capacity, use '
                "'uint8' storage or enlarge /dev/shm") from None
        finally:
            os.close(fd)

    def _init_common(self, name: str, segment: _Mapping, capacity: int,
                     shape: Tuple[int, int, int], storage: str, nbytes: int,
                     owner: bool) -> None:
        self.name = name
        self.capacity = capacity
        self.latent_shape = shape
        self.storage = storage
        self.bytes_per_pattern = latent_codec.bytes_per_pattern(storage, shape)
        self.nbytes = nbytes
        self._owner = owner
        self._closed = False
        self._lock = threading.RLock()
        self._seg = segment
        self._fields = [key for key in segment.arrays if key != 'labels']
        self._finalizer = weakref.finalize(self, segment.release)

    @classmethod
    def attach(cls, name: str) -> 'SharedReplayBuffer':
        """Map an existing buffer of another process, read-only, without owning it.

        Layout comes from the header. Closing (or exiting) never unlinks the segment.
        """
        _check_name(name)
        path = os.path.join(SHM_DIR, name)
        self = cls.__new__(cls)
        shm: Optional[SharedMemory] = None
        mapping: Optional[mmap.mmap] = None
        try:
            if os.path.isdir(SHM_DIR):
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    if size < _HEADER_BYTES:
                        raise InputError(
                            f'shared-memory segment {name!r} ({size} bytes) is not a '
                            'ros2_latent_replay buffer')
                    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                finally:
                    os.close(fd)
                buf: Any = mapping
            else:   # pragma: no cover - platforms without /dev/shm
                if sys.version_info >= (3, 13):
                    shm = SharedMemory(name, track=False)
                else:
                    shm = SharedMemory(name)
                    _unregister(shm._name)
                size = shm.size
                buf = shm.buf
        except FileNotFoundError:
            raise InputError(f'no shared-memory segment named {name!r}') from None
        except PermissionError:
            raise InputError(f'no permission to read shared-memory segment {name!r}') from None
        except (OSError, ValueError) as exc:
            raise InputError(f'cannot map shared-memory segment {name!r}: {exc}') from None
        try:
            header = np.frombuffer(buf, dtype=np.int64, count=_HEADER_SLOTS).copy() \
                if size >= _HEADER_BYTES else None
            if header is None or int(header[_H_MAGIC]) != MAGIC:
                raise InputError(f'shared-memory segment {name!r} is not a ros2_latent_replay '
                                 'buffer (bad magic)')
            if int(header[_H_VERSION]) != LAYOUT_VERSION:
                raise InputError(
                    f'buffer {name!r} has layout version {int(header[_H_VERSION])}, this code '
                    f'reads version {LAYOUT_VERSION}')
            try:
                storage = latent_codec.storage_from_code(int(header[_H_STORAGE]))
                shape = latent_codec.check_latent_shape(
                    (int(header[_H_C]), int(header[_H_H]), int(header[_H_W])))
                capacity = _check_int(int(header[_H_CAPACITY]), 'capacity', 0, 100_000_000)
            except (ConfigError, InputError) as exc:
                raise InputError(f'buffer {name!r} has a corrupt header: {exc}') from None
            arrays, nbytes = _layout(capacity, shape, storage)
            if size < nbytes or int(header[_H_NBYTES]) != nbytes:
                raise InputError(f'buffer {name!r} is {size} bytes, its header describes '
                                 f'{nbytes}')
        except BaseException:
            if mapping is not None:
                mapping.close()
            if shm is not None:
                shm.close()
            raise
        self._init_common(name, _Mapping(buf, arrays, shm, mapping, None), capacity, shape,
                          storage, nbytes, owner=False)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def owner(self) -> bool:
        """Whether this handle created the segment (and may write and unlink it)."""
        return self._owner

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def fill(self) -> int:
        """Number of occupied slots (read from the shared header)."""
        self._check_open()
        return int(self._seg.header[_H_FILL])

    @property
    def generation(self) -> int:
        """Write counter: even when idle, odd while a write is in progress, +2 per change."""
        self._check_open()
        return int(self._seg.header[_H_GEN])

    @property
    def owner_pid(self) -> int:
        """Pid of the creating process, from the header."""
        self._check_open()
        return int(self._seg.header[_H_PID])

    def __len__(self) -> int:
        """Return the number of occupied slots."""
        return self.fill

    def __repr__(self) -> str:
        """Name, layout and fill."""
        state = 'closed' if self._closed else f'fill={self.fill}'
        return (f'SharedReplayBuffer(name={self.name!r}, capacity={self.capacity}, '
                f'latent_shape={self.latent_shape}, storage={self.storage!r}, {state}, '
                f'{"owner" if self._owner else "attached"})')

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f'replay buffer {self.name!r} is closed')

    def _check_writable(self, action: str) -> None:
        self._check_open()
        if not self._owner:
            raise InputError(
                f'cannot {action}: this handle on {self.name!r} was attached read-only; only '
                f'the owner process (pid {self.owner_pid}) writes')

    def _snapshot(self, copy_fn):
        """Run ``copy_fn()`` between two equal, even generation reads (seqlock)."""
        with self._lock:
            self._check_open()
            header = self._seg.header
            deadline = time.monotonic() + READ_RETRY_SECONDS
            pause = 1e-4
            attempts = 0
            while True:
                attempts += 1
                before = int(header[_H_GEN])
                if before % 2 == 0:
                    result = copy_fn()
                    if int(header[_H_GEN]) == before:
                        return result
                if time.monotonic() > deadline:
                    raise BusyError(
                        f'replay buffer {self.name!r} was being written during all '
                        f'{attempts} read attempts in {READ_RETRY_SECONDS} s (generation '
                        f'{int(header[_H_GEN])}); its owner may have died mid-write')
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

    def _begin_write(self) -> None:
        self._seg.header[_H_GEN] += 1

    def _end_write(self) -> None:
        self._seg.header[_H_GEN] += 1

    def _raw_rows(self, rows: Any) -> Dict[str, np.ndarray]:
        return {key: self._seg.arrays[key][rows].copy() for key in self._fields}

    # ------------------------------------------------------------------ reading
    def labels(self) -> np.ndarray:
        """Copy of the labels of the occupied slots, int32 ``[fill]``."""
        return self._snapshot(
            lambda: self._seg.arrays['labels'][:int(self._seg.header[_H_FILL])].copy())

    def read(self, slots: Any) -> torch.Tensor:
        """Return the decoded float32 latents ``[k, C, H, W]`` of the given occupied slots."""
        index = _as_index_array(slots, 'slots')

        def copy() -> Dict[str, np.ndarray]:
            fill = int(self._seg.header[_H_FILL])
            if index.size and (index.min() < 0 or index.max() >= fill):
                bad = index[(index < 0) | (index >= fill)][0]
                raise InputError(f'slot {int(bad)} is not occupied (fill is {fill})')
            return self._raw_rows(index)

        record = self._snapshot(copy)
        return torch.from_numpy(latent_codec.decode(record, self.storage))

    def read_all(self) -> Tuple[torch.Tensor, np.ndarray]:
        """Return decoded latents ``[fill, C, H, W]`` and int32 labels ``[fill]``, one snapshot."""
        def copy() -> Tuple[Dict[str, np.ndarray], np.ndarray]:
            fill = int(self._seg.header[_H_FILL])
            return self._raw_rows(slice(0, fill)), self._seg.arrays['labels'][:fill].copy()

        record, labels = self._snapshot(copy)
        return torch.from_numpy(latent_codec.decode(record, self.storage)), labels

    # ------------------------------------------------------------------ writing
    def write(self, slots: Any, latents: Any, labels: Any) -> None:
        """Store ``latents[j]`` with ``labels[j]`` in slot ``slots[j]``.

        Slots below ``fill`` are overwritten; slots at or above it must be exactly
        ``fill, fill + 1, ...`` (in any order) and extend ``fill``. Everything is
        validated before anything is written; on InputError nothing changes.
        """
        self._check_writable('write')
        index = _as_index_array(slots, 'slots')
        label_array = _as_index_array(labels, 'labels')
        record = latent_codec.encode(latents, self.storage, self.latent_shape)
        count = index.size
        if record['data'].shape[0] != count or label_array.size != count:
            raise InputError(
                f'write needs as many slots, latents and labels; got {count} slot(s), '
                f'{record["data"].shape[0]} latent(s) and {label_array.size} label(s)')
        if count and (label_array.min() < 0 or label_array.max() > _LABEL_MAX):
            raise InputError(f'labels must be in [0, {_LABEL_MAX}], got '
                             f'[{int(label_array.min())}, {int(label_array.max())}]')
        with self._lock:
            self._check_open()
            fill = int(self._seg.header[_H_FILL])
            if count:
                if index.min() < 0 or index.max() >= self.capacity:
                    raise InputError(
                        f'slots must be in [0, {self.capacity}), got '
                        f'[{int(index.min())}, {int(index.max())}]')
                if np.unique(index).size != count:
                    raise InputError('slots must not repeat within one write')
                grow = np.sort(index[index >= fill])
                if grow.size and not np.array_equal(
                        grow, np.arange(fill, fill + grow.size)):
                    raise InputError(
                        f'new slots must extend the filled part contiguously: fill is {fill}, '
                        f'got free slot(s) {grow[:8].tolist()}')
            else:
                return
            self._begin_write()
            try:
                for key in self._fields:
                    self._seg.arrays[key][index] = record[key]
                self._seg.arrays['labels'][index] = label_array.astype(np.int32)
                self._seg.header[_H_FILL] = fill + grow.size
            finally:
                self._end_write()

    def clear(self) -> None:
        """Forget every pattern (fill = 0)."""
        self._check_writable('clear')
        with self._lock:
            self._begin_write()
            try:
                self._seg.header[_H_FILL] = 0
            finally:
                self._end_write()

    # ------------------------------------------------------------------ checkpoints
    def _layout_values(self) -> Tuple[int, ...]:
        return (LAYOUT_VERSION, latent_codec.STORAGE_CODES[self.storage], self.capacity,
                *self.latent_shape)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Return the stored bytes of the occupied slots, labels, fill and layout as tensors.

        Keys: ``layout`` (int64: version, storage code, capacity, C, H, W), ``fill``
        (int64 scalar), ``labels`` (int32 ``[fill]``), ``data`` (storage dtype) and, for
        uint8, ``scale`` and ``offset`` (float32 ``[fill, C]``). ``torch.load`` with
        ``weights_only=True`` reads it.
        """
        def copy() -> Tuple[int, Dict[str, np.ndarray], np.ndarray]:
            fill = int(self._seg.header[_H_FILL])
            labels = self._seg.arrays['labels'][:fill].copy()
            return fill, self._raw_rows(slice(0, fill)), labels

        fill, record, labels = self._snapshot(copy)
        state = {'layout': torch.tensor(self._layout_values(), dtype=torch.int64),
                 'fill': torch.tensor(fill, dtype=torch.int64),
                 'labels': torch.from_numpy(labels)}
        for key, value in record.items():
            state[key] = torch.from_numpy(value)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the contents with a :meth:`state_dict`; CheckpointError leaves it as is."""
        self._check_writable('load a state')
        record, labels, fill = self._check_state(state)
        with self._lock:
            self._check_open()
            self._begin_write()
            try:
                for key in self._fields:
                    self._seg.arrays[key][:fill] = record[key]
                self._seg.arrays['labels'][:fill] = labels
                self._seg.header[_H_FILL] = fill
            finally:
                self._end_write()

    def _check_state(self, state: Mapping[str, Any]
                     ) -> Tuple[Dict[str, np.ndarray], np.ndarray, int]:
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f'replay state must be a dict of tensors, got {type(state).__name__}')
        expected = {'layout', 'fill', 'labels', *self._fields}
        if set(state) != expected:
            raise CheckpointError(
                f'replay state needs keys {sorted(expected)}, got {sorted(map(str, state))}')
        for key in expected:
            if not isinstance(state[key], torch.Tensor):
                raise CheckpointError(f'replay state {key!r} is not a tensor')
        layout = state['layout']
        if layout.dtype != torch.int64 or tuple(layout.shape) != (len(_STATE_LAYOUT_KEYS),):
            raise CheckpointError('replay state has a malformed layout entry')
        saved = tuple(int(v) for v in layout.tolist())
        mine = self._layout_values()
        if saved != mine:
            diffs = ', '.join(f'{key} {a} != {b}' for key, a, b in
                              zip(_STATE_LAYOUT_KEYS, saved, mine) if a != b)
            raise CheckpointError(f'replay state layout does not match this buffer '
                                  f'(saved vs this: {diffs})')
        fill_t = state['fill']
        if fill_t.dtype != torch.int64 or fill_t.dim() != 0 \
                or not 0 <= int(fill_t) <= self.capacity:
            raise CheckpointError(
                f'replay state fill must be an int64 scalar in [0, {self.capacity}]')
        fill = int(fill_t)
        labels = state['labels'].detach().cpu().numpy()
        if labels.dtype != np.int32 or labels.shape != (fill,):
            raise CheckpointError(
                f'replay state labels must be int32 [{fill}], got {labels.dtype} '
                f'{labels.shape}')
        if fill and labels.min() < 0:
            raise CheckpointError('replay state has negative labels')
        record = {}
        for key, (dtype, row) in latent_codec.record_fields(
                self.storage, self.latent_shape).items():
            value = state[key].detach().cpu().numpy()
            if value.dtype != dtype or value.shape != (fill,) + tuple(row):
                raise CheckpointError(
                    f'replay state {key!r} must be {dtype} {(fill,) + tuple(row)}, got '
                    f'{value.dtype} {value.shape}')
            if dtype.kind == 'f' and not np.isfinite(value).all():
                raise CheckpointError(f'replay state {key!r} contains NaN/inf')
            record[key] = value
        if 'scale' in record and fill and record['scale'].min() < 0:
            raise CheckpointError('replay state has negative quantisation scales')
        return record, labels, fill

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release this handle; the owner also unlinks the segment. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finalizer()              # runs once: views dropped, mapping closed, unlink

    def unlink(self) -> None:
        """Remove the segment's name now (mappings stay valid until closed)."""
        if self._owner:
            self._seg.unlink()             # once, and only from the owning process
            return
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            pass

    def __enter__(self) -> 'SharedReplayBuffer':
        """Use as a context manager; :meth:`close` on exit."""
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Close (and, for the owner, unlink)."""
        self.close()
