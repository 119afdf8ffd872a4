"""``latent-replay-write-bag``: a CORe50-format scenario as a rosbag2 (mcap or sqlite3).

Written with the PyPI ``rosbags`` library (no ROS install needed); the layout is in
:mod:`.bag_format`. Example::

    latent-replay-write-bag --scenario NIC_coil/run0 --images coil100/images --out run0_bag
    latent-replay-write-bag ... --storage sqlite3 --test-out run0_test_bag
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import bag_format as fmt
from ..core.errors import LatentReplayError
from ..core.evaluation import ScenarioSource, label_runs
from ..core.scenario import Scenario, read_scenario

STORAGES = ('mcap', 'sqlite3')


def bag_size(path) -> int:
    """Return the bytes on disk of a bag folder (or file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


class _BagOutput:
    """One open rosbag2 writer with the three evaluation topics."""

    def __init__(self, path: Path, storage: str, overwrite: bool) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise LatentReplayError(f'storage must be one of {", ".join(STORAGES)}')
        if path.exists():
            if not overwrite:
                raise LatentReplayError(f'{path} exists; choose another --out or pass '
                                        f'--overwrite')
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.path = path
        self.types = get_typestore(Stores.ROS2_KILTED)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        # version 8: readable by rosbag2 of Iron, Jazzy, Kilted and by rosbags
        self.writer = Writer(path, version=8, storage_plugin=plugin)
        self.writer.open()
        self.image = self.writer.add_connection(fmt.IMAGE_TOPIC, fmt.IMAGE_TYPE,
                                                typestore=self.types)
        self.label = self.writer.add_connection(fmt.LABEL_TOPIC, fmt.STRING_TYPE,
                                                typestore=self.types)
        self.marker = self.writer.add_connection(fmt.MARKER_TOPIC, fmt.STRING_TYPE,
                                                 typestore=self.types)
        self.counts = {'images': 0, 'labels': 0, 'markers': 0}
        self.last_ns = 0

    def _string(self, connection: Any, stamp_ns: int, text: str) -> None:
        cls = self.types.types[fmt.STRING_TYPE]
        data = self.types.serialize_cdr(cls(data=text), fmt.STRING_TYPE)
        self.writer.write(connection, stamp_ns, data)
        self.last_ns = max(self.last_ns, stamp_ns)

    def write_label(self, stamp_ns: int, text: str) -> None:
        """Write a ``/label`` message."""
        self._string(self.label, stamp_ns, text)
        self.counts['labels'] += 1

    def write_marker(self, time_ns: int, event: str, **values: Any) -> None:
        """Write an ``/eval/marker`` message."""
        self._string(self.marker, time_ns, fmt.marker_text(event, **values))
        self.counts['markers'] += 1

    def write_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        """Write a ``sensor_msgs/Image`` (rgb8) stamped ``stamp_ns``."""
        types = self.types.types
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec),
            frame_id=fmt.FRAME_ID)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        height, width = rgb.shape[:2]
        msg = types[fmt.IMAGE_TYPE](header=header, height=height, width=width, encoding='rgb8',
                                    is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
        self.writer.write(self.image, stamp_ns, self.types.serialize_cdr(msg, fmt.IMAGE_TYPE))
        self.counts['images'] += 1
        self.last_ns = max(self.last_ns, stamp_ns)

    def close(self) -> None:
        """Finish the bag (metadata.yaml, indexes)."""
        self.writer.close()

    def discard(self) -> None:
        """Abandon a bag that failed half-way: remove what was written."""
        try:
            self.writer.abort()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


def _write_test(out: _BagOutput, source: ScenarioSource, start_ns: int, period_ns: int,
                bar: Any) -> int:
    frames, names = source.load_test()
    out.write_marker(start_ns, 'test_begin', frames=len(names))
    stamp = start_ns
    for index, (frame, name) in enumerate(zip(frames, names)):
        stamp += period_ns
        out.write_image(stamp, frame)
        out.write_marker(stamp, 'test_frame', index=index, label=name, stamp_ns=stamp)
        if bar is not None:
            bar.update(1)
    stamp += period_ns
    out.write_marker(stamp, 'test_end', frames=len(names))
    return stamp


def write_bag(scenario: Scenario, path, storage: str = 'mcap', fps: float = fmt.DEFAULT_FPS,
              batch_gap_s: float = fmt.DEFAULT_BATCH_GAP_S, test_path=None,
              include_test: bool = True, test_stride: int = 1, overwrite: bool = False,
              start_ns: int = fmt.DEFAULT_START_NS, progress: bool = True) -> Dict[str, Any]:
    """Write ``scenario`` as an evaluation bag; return a summary (paths, counts, sizes).

    The test set goes at the end of the same bag, or into ``test_path`` when given, or is
    left out with ``include_test=False``.
    """
    if not 0.1 <= float(fps) <= 1000.0:
        raise LatentReplayError(f'fps must be in [0.1, 1000], got {fps}')
    if float(batch_gap_s) < 0:
        raise LatentReplayError('batch gap must be >= 0')
    source = ScenarioSource(scenario, test_stride=test_stride)
    period = int(round(1e9 / float(fps)))
    gap = int(round(float(batch_gap_s) * 1e9))
    path = Path(path)
    test_mode = 'none' if not include_test else ('separate' if test_path else 'same')
    total = scenario.num_training_frames + (len(source.test_labels) if include_test else 0)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f'writing {path.name}', unit='frame', mininterval=1.0)
    try:
        summary = _write_all(source, path, storage, overwrite, period, gap, int(start_ns),
                             float(fps), test_mode, test_path, bar)
    finally:
        if bar is not None:
            bar.close()
    return summary


def _write_all(source: ScenarioSource, path: Path, storage: str, overwrite: bool, period: int,
               gap: int, start_ns: int, fps: float, test_mode: str, test_path: Any,
               bar: Any) -> Dict[str, Any]:
    scenario = source.scenario
    out = _BagOutput(path, storage, overwrite)
    summary: Dict[str, Any] = {'bag': str(path), 'storage': storage, 'fps': fps}
    try:
        stamp = start_ns
        out.write_marker(stamp, 'scenario', format=fmt.FORMAT, version=fmt.VERSION,
                         name=source.name, batches=source.num_batches,
                         training_frames=scenario.num_training_frames,
                         test_frames=len(source.test_labels) if test_mode != 'none' else 0,
                         fps=fps, test=test_mode)
        written_training = 0
        for index in range(source.num_batches):
            frames, names = source.load_batch(index)
            labels = list(dict.fromkeys(names))
            stamp += period
            out.write_marker(stamp, 'batch_begin', batch=index, frames=len(names),
                             labels=labels)
            for label, begin, end in label_runs(names):
                stamp += period
                out.write_label(stamp, label)
                for frame in frames[begin:end]:
                    stamp += period
                    out.write_image(stamp, frame)
                    if bar is not None:
                        bar.update(1)
            written_training += len(names)
            stamp += period
            out.write_label(stamp, '')
            stamp += period
            out.write_marker(stamp, 'learn', batch=index, frames=len(names), labels=labels)
            stamp += gap
        test_frames = 0
        if test_mode == 'same':
            stamp = _write_test(out, source, stamp, period, bar)
            test_frames = len(source.test_labels)
        stamp += period
        out.write_marker(stamp, 'end')
        summary.update(training_frames=written_training, test_frames=test_frames,
                       batches=source.num_batches, messages=dict(out.counts),
                       duration_s=round((out.last_ns - start_ns) / 1e9, 3))
    except BaseException:
        out.discard()
        raise
    out.close()
    summary['bytes'] = bag_size(path)
    if test_mode == 'separate':
        test_out = _BagOutput(Path(test_path), storage, overwrite)
        try:
            test_out.write_marker(start_ns, 'scenario', format=fmt.FORMAT, version=fmt.VERSION,
                                  name=source.name, batches=0, training_frames=0,
                                  test_frames=len(source.test_labels), fps=fps,
                                  test='separate')
            end = _write_test(test_out, source, start_ns + period, period, bar)
            test_out.write_marker(end + period, 'end')
        except BaseException:
            test_out.discard()
            raise
        test_out.close()
        summary.update(test_bag=str(test_path), test_frames=len(source.test_labels),
                       test_bytes=bag_size(test_path))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line options of ``latent-replay-write-bag``."""
    parser = argparse.ArgumentParser(
        prog='latent-replay-write-bag',
        description='Write a CORe50-format scenario (train_batch_XX_filelist.txt + '
                    'test_filelist.txt) as a rosbag2 for evaluation: /camera/image_raw '
                    '(sensor_msgs/Image rgb8, paced like a camera), /label (std_msgs/String) '
                    'and /eval/marker (std_msgs/String JSON: batch ends and test frames). '
                    'See docs/EVALUATION.md.')
    parser.add_argument('--scenario', required=True, metavar='DIR', help='scenario folder')
    parser.add_argument('--images', required=True, metavar='DIR',
                        help='image root the filelists are relative to')
    parser.add_argument('--out', required=True, metavar='PATH', help='bag folder to create')
    parser.add_argument('--storage', choices=STORAGES, default='mcap',
                        help='rosbag2 storage (default mcap)')
    parser.add_argument('--test-out', metavar='PATH',
                        help='write the test frames into this separate bag instead')
    parser.add_argument('--no-test', action='store_true', help='leave the test frames out')
    parser.add_argument('--fps', type=float, default=fmt.DEFAULT_FPS,
                        help=f'camera frame rate of the timeline (default {fmt.DEFAULT_FPS:g})')
    parser.add_argument('--batch-gap', type=float, default=fmt.DEFAULT_BATCH_GAP_S,
                        metavar='SECONDS', help='bag time between batches (default '
                                                f'{fmt.DEFAULT_BATCH_GAP_S:g})')
    parser.add_argument('--labels', metavar='FILE', help='label names file')
    parser.add_argument('--allow-missing', action='store_true',
                        help='skip missing/unreadable images and malformed lines (reported)')
    parser.add_argument('--max-batches', type=int, metavar='N',
                        help='only the first N training batches')
    parser.add_argument('--test-stride', type=int, default=1, metavar='K',
                        help='every K-th test frame only')
    parser.add_argument('--overwrite', action='store_true', help='replace existing bags')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.test_out and args.no_test:
            raise LatentReplayError('--test-out and --no-test contradict each other')
        scenario = read_scenario(args.scenario, args.images, labels_file=args.labels,
                                 allow_missing=args.allow_missing, max_batches=args.max_batches)
        for problem in scenario.problems:
            print(f'warning: skipped {problem}', file=sys.stderr)
        summary = write_bag(scenario, args.out, storage=args.storage, fps=args.fps,
                            batch_gap_s=args.batch_gap, test_path=args.test_out,
                            include_test=not args.no_test, test_stride=args.test_stride,
                            overwrite=args.overwrite, progress=not args.no_progress)
    except (LatentReplayError, ValueError, OSError) as exc:
        print(f'latent-replay-write-bag: error: {exc}', file=sys.stderr)
        return 2
    lines: List[str] = [
        f'wrote {summary["bag"]} ({summary["storage"]}): {summary["batches"]} batches, '
        f'{summary["training_frames"]} training frames, {summary["messages"]["images"]} '
        f'images in all, {summary["bytes"] / 1e6:.1f} MB, {summary["duration_s"]:.1f} s of '
        f'bag time']
    if 'test_bag' in summary:
        lines.append(f'wrote {summary["test_bag"]}: {summary["test_frames"]} test frames, '
                     f'{summary["test_bytes"] / 1e6:.1f} MB')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
