"""Read evaluation bags (layout in :mod:`.bag_format`) with ``rosbags``' AnyReader.

:class:`BagIndex` scans a bag once (markers, labels and the time of every image, without
decoding images) and knows which frames form each training batch and which are test frames.
:class:`BagSource` turns that into a source for the offline evaluator
(:func:`ros2_latent_replay.core.evaluation.evaluate`); the live evaluator uses the index to
play the bag. Images are converted with the node's own converter, so every encoding the node
accepts works here too.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import bag_format as fmt
from ..image_conversion import image_fields_to_rgb


@dataclass
class BatchInfo:
    """One training batch of a bag: its learn marker and its labelled frames."""

    index: int
    learn_ns: int
    frames: List[Tuple[int, str]] = field(default_factory=list)   # (bag time, label)
    expected: int = 0


@dataclass
class TestFrameInfo:
    """One test frame: bag time of its image and its true class name."""

    stamp_ns: int
    label: str


def open_reader(path):
    """Open an AnyReader on ``path`` (a bag folder or a .mcap/.db3 file)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise fmt.BagFormatError(f'bag {path} does not exist')
    reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
    reader.open()
    return reader


def _connections(reader: Any, path: Any) -> Dict[str, Any]:
    found = {}
    for connection in reader.connections:
        if connection.topic in (fmt.IMAGE_TOPIC, fmt.LABEL_TOPIC, fmt.MARKER_TOPIC):
            found.setdefault(connection.topic, []).append(connection)
    if fmt.MARKER_TOPIC not in found or fmt.IMAGE_TOPIC not in found:
        topics = sorted({c.topic for c in reader.connections})
        raise fmt.BagFormatError(
            f'{path} is not an evaluation bag: it needs {fmt.IMAGE_TOPIC} and '
            f'{fmt.MARKER_TOPIC} (written by latent-replay-write-bag); it has '
            f'{", ".join(topics) or "no topics"}')
    return found


class BagIndex:
    """Where everything is in an evaluation bag (one scan, images not decoded)."""

    def __init__(self, path, max_batches: Optional[int] = None) -> None:
        """Scan ``path``; keep only the first ``max_batches`` training batches if given."""
        self.path = Path(path)
        self.scenario: Dict[str, Any] = {}
        self.batches: List[BatchInfo] = []
        self.test: List[TestFrameInfo] = []
        self.test_begin_ns: Optional[int] = None
        self.start_ns = 0
        self.end_ns = 0
        reader = open_reader(self.path)
        try:
            self._scan(reader)
        finally:
            reader.close()
        if not self.scenario:
            raise fmt.BagFormatError(f'{self.path} has no scenario marker on '
                                     f'{fmt.MARKER_TOPIC}')
        if self.scenario.get('format') != fmt.FORMAT or \
                int(self.scenario.get('version', 0)) > fmt.VERSION:
            raise fmt.BagFormatError(
                f'{self.path}: marker format {self.scenario.get("format")!r} version '
                f'{self.scenario.get("version")} is not {fmt.FORMAT} <= {fmt.VERSION}')
        if max_batches is not None:
            self.batches = self.batches[:max(1, int(max_batches))]

    def _scan(self, reader: Any) -> None:
        connections = _connections(reader, self.path)
        wanted = [c for group in connections.values() for c in group]
        label: Optional[str] = None
        pending: List[Tuple[int, str]] = []
        images: Dict[int, Optional[str]] = {}
        test_markers: Dict[int, TestFrameInfo] = {}
        first = True
        for connection, stamp, raw in reader.messages(connections=wanted):
            if first:
                self.start_ns, first = stamp, False
            self.end_ns = stamp
            topic = connection.topic
            if topic == fmt.IMAGE_TOPIC:
                images[stamp] = label
                if label:
                    pending.append((stamp, label))
                continue
            msg = reader.deserialize(raw, connection.msgtype)
            if topic == fmt.LABEL_TOPIC:
                label = msg.data.strip() or None
                continue
            marker = fmt.parse_marker(msg.data)
            event = marker['event']
            if event == 'scenario' and not self.scenario:
                self.scenario = marker
            elif event == 'learn':
                batch = BatchInfo(index=len(self.batches), learn_ns=stamp, frames=pending,
                                  expected=int(marker['frames']))
                if int(marker['batch']) != batch.index:
                    raise fmt.BagFormatError(f'{self.path}: learn marker for batch '
                                             f'{marker["batch"]} found as batch {batch.index}')
                self.batches.append(batch)
                pending = []
            elif event == 'test_begin':
                self.test_begin_ns = stamp
            elif event == 'test_frame':
                test_markers[int(marker['stamp_ns'])] = TestFrameInfo(
                    int(marker['stamp_ns']), str(marker['label']))
        missing = [s for s in test_markers if s not in images]
        if missing:
            raise fmt.BagFormatError(f'{self.path}: {len(missing)} test_frame markers have no '
                                     f'image with that stamp (first: {missing[:3]})')
        self.test = [test_markers[s] for s in sorted(test_markers)]
        for batch in self.batches:
            # frames of a batch are labelled frames before its learn marker; test frames
            # never carry a label, so they cannot end up here
            batch.frames = [(s, lbl) for s, lbl in batch.frames if s not in test_markers]

    @property
    def training_frames(self) -> int:
        """Count the labelled frames over all kept batches."""
        return sum(len(b.frames) for b in self.batches)


def message_to_rgb(msg: Any) -> np.ndarray:
    """Convert a deserialized sensor_msgs/Image to H x W x 3 uint8 RGB (node's converter)."""
    data = msg.data.tobytes() if isinstance(msg.data, np.ndarray) else bytes(msg.data)
    return image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                               msg.is_bigendian, data)


def read_images(path, stamps: Sequence[int]) -> Dict[int, Any]:
    """Return the deserialized image messages of ``path`` at the given bag times, keyed by time."""
    wanted = set(int(s) for s in stamps)
    if not wanted:
        return {}
    found: Dict[int, Any] = {}
    reader = open_reader(path)
    try:
        connections = [c for c in reader.connections if c.topic == fmt.IMAGE_TOPIC]
        for connection, stamp, raw in reader.messages(connections=connections,
                                                      start=min(wanted), stop=max(wanted) + 1):
            if stamp in wanted:
                found[stamp] = reader.deserialize(raw, connection.msgtype)
    finally:
        reader.close()
    lost = wanted - set(found)
    if lost:
        raise fmt.BagFormatError(f'{path}: {len(lost)} indexed images could not be read back')
    return found


def iter_raw(path, start: Optional[int] = None, stop: Optional[int] = None
             ) -> Iterator[Tuple[str, int, bytes]]:
    """Yield (topic, bag time, CDR bytes) of the evaluation topics in time order."""
    reader = open_reader(path)
    try:
        connections = [c for group in _connections(reader, path).values() for c in group]
        for connection, stamp, raw in reader.messages(connections=connections, start=start,
                                                      stop=stop):
            yield connection.topic, stamp, bytes(raw)
    finally:
        reader.close()


def _stack(frames: List[np.ndarray]) -> Any:
    if frames and len({f.shape for f in frames}) == 1:
        return np.stack(frames)
    return frames


class BagSource:
    """An evaluation bag as a source for :func:`~ros2_latent_replay.core.evaluation.evaluate`.

    ``test_bag`` holds the test frames when they are not in ``path``. ``test_stride`` keeps
    every k-th test frame.
    """

    def __init__(self, path, test_bag=None, max_batches: Optional[int] = None,
                 test_stride: int = 1) -> None:
        """Index the bag(s); images are decoded when a batch is loaded."""
        self.path = Path(path)
        self.index = BagIndex(self.path, max_batches=max_batches)
        if not self.index.batches:
            raise fmt.BagFormatError(f'{self.path} holds no training batch (no learn marker)')
        self.test_path = Path(test_bag) if test_bag else self.path
        self.test_index = BagIndex(self.test_path) if test_bag else self.index
        if not self.test_index.test:
            raise fmt.BagFormatError(
                f'{self.test_path} holds no test frames; write them with '
                f'latent-replay-write-bag (same bag or --test-out) and pass --test-bag')
        if int(test_stride) < 1:
            raise fmt.BagFormatError('test_stride must be >= 1')
        self.test_frames = self.test_index.test[::int(test_stride)]
        self.test_stride = int(test_stride)
        self.name = str(self.index.scenario.get('name') or self.path.name)

    @property
    def num_batches(self) -> int:
        """Return the number of training batches."""
        return len(self.index.batches)

    def batch_labels(self, index: int) -> List[str]:
        """Return the class name of every frame of batch ``index``."""
        return [lbl for _, lbl in self.index.batches[index].frames]

    def load_batch(self, index: int) -> Tuple[Any, List[str]]:
        """Load the frames and class names of batch ``index``."""
        frames = self.index.batches[index].frames
        messages = read_images(self.path, [s for s, _ in frames])
        return _stack([message_to_rgb(messages[s]) for s, _ in frames]), \
            [lbl for _, lbl in frames]

    @property
    def test_labels(self) -> List[str]:
        """Return the true class name of every test frame."""
        return [t.label for t in self.test_frames]

    def load_test(self) -> Tuple[Any, List[str]]:
        """Load the test frames and their true class names."""
        messages = read_images(self.test_path, [t.stamp_ns for t in self.test_frames])
        return _stack([message_to_rgb(messages[t.stamp_ns]) for t in self.test_frames]), \
            self.test_labels

    def describe(self) -> Dict[str, Any]:
        """Describe this source for the results file."""
        return {'kind': 'bag', 'name': self.name, 'bag': str(self.path),
                'test_bag': str(self.test_path), 'batches': self.num_batches,
                'training_frames': self.index.training_frames,
                'test_frames': len(self.test_frames), 'test_stride': self.test_stride}
