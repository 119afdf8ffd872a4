#!/usr/bin/env python3
"""Soak test: run latent_replay_node for N minutes under a camera and a teaching operator.

The node runs as its own process (the real entry point, the package's params file plus any
``--param name:=value``). This script is the robot around it: a camera publishing real
photos as 640x480 rgb8 frames at 30 fps (best effort, like a camera driver), an operator who
every few seconds shows one of a few objects under its label for a moment and then calls
``~/learn``, and a client asking ``~/predict`` several times a second. Every few seconds it
records the node's resident memory, threads and open files, the predict latency (round
trip and the node's own), frames published / received / dropped, and the learning steps.
At the end it checks the node on held-out views, stops it with SIGINT, checks that no
shared memory is left, and writes ``soak.json`` and ``soak.png`` (the curves) to ``--out``.

    nice -n 10 .venv/bin/python scripts/soak.py --minutes 15
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ros2_latent_replay import ros_env  # noqa: E402  (before rclpy is imported)

NODE = '/latent_replay_node'
PROFILE = REPO / 'config' / 'fastdds_large_images.xml'


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=15.0, help='how long to run')
    parser.add_argument('--fps', type=float, default=30.0, help='camera frame rate')
    parser.add_argument('--size', default='640x480', help='camera frame size WxH')
    parser.add_argument('--objects', type=int, default=5, help='objects the operator teaches')
    parser.add_argument('--teach-every', type=float, default=6.0,
                        help='seconds between teaching episodes')
    parser.add_argument('--teach-seconds', type=float, default=1.5,
                        help='seconds an object is shown under its label')
    parser.add_argument('--predict-hz', type=float, default=5.0, help='~/predict calls per s')
    parser.add_argument('--sample-every', type=float, default=5.0,
                        help='seconds per recorded sample')
    parser.add_argument('--param', action='append', default=[],
                        help='extra node parameter name:=value (repeatable)')
    parser.add_argument('--data', default='auto', choices=('auto', 'skimage', 'coil100'),
                        help='photo source (auto: COIL-100 from ../shared/data if present)')
    parser.add_argument('--out', default=str(REPO / 'docs' / 'results' / 'soak'),
                        help='folder for soak.json and soak.png')
    parser.add_argument('--replot', metavar='SOAK_JSON',
                        help='only rebuild the summary and plot of an earlier run')
    return parser.parse_args(argv)


def camera_frame(photo, width, height):
    """Scale ``photo`` to the frame height and centre it on a grey frame of width x height."""
    from PIL import Image
    h, w = photo.shape[:2]
    scale = min(height / h, width / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
    frame = np.full((height, width, 3), 118, dtype=np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = resized
    return frame


class Window:
    """Measurements between two samples."""

    def __init__(self):
        self.round_trips, self.node_latencies = [], []
        self.learn_ok, self.learn_busy, self.learn_failed, self.learn_seconds = 0, 0, 0, []
        self.predict_failed = 0
        self.predict_errors = {}


def percentile(values, q):
    """Return the q-th percentile of ``values`` (None for none)."""
    return float(np.percentile(values, q)) if values else None


def main(argv=None):
    """Run the soak; return 0 when the node survived and stopped cleanly."""
    args = parse_args(argv)
    if args.replot:
        old = json.loads(Path(args.replot).read_text())
        settings, samples, summary = old['settings'], old['samples'], old['summary']
        report = summarise(argparse.Namespace(**{k: v for k, v in settings.items() if k not in (
            'frame_size', 'photos')}), samples, summary['held_out_accuracy'],
            summary['exit_code'], summary['shared_memory_left'], settings['photos'],
            settings['frame_size'])
        Path(args.replot).write_text(json.dumps(report, indent=1) + '\n')
        plot(samples, report, Path(args.replot).with_suffix('.png'))
        print(json.dumps(report['summary'], indent=1))
        return 0
    width, height = (int(v) for v in args.size.lower().split('x'))
    workdir = Path(tempfile.mkdtemp(prefix='ros2lr_soak_'))
    ros_env.isolate(os.environ, log_dir=str(workdir / 'log'))
    os.environ['ROS_HOME'] = str(workdir / 'ros_home')
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)    # Fast DDS 3 (Kilted)
    os.environ.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    os.environ.setdefault('MALLOC_MMAP_MAX_', '0')
    os.environ.setdefault('MALLOC_TRIM_THRESHOLD_', '1073741824')

    import psutil
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ros2_latent_replay.demo import choose_views, image_message

    description, views = choose_views(args.data, args.objects, 16, 4)
    names = list(views)
    train = {name: [camera_frame(f, width, height) for f in views[name][0]] for name in names}
    test = {name: [camera_frame(f, width, height) for f in views[name][1]] for name in names}
    messages = {name: [image_message(f) for f in frames] for name, frames in train.items()}
    idle = [image_message(np.full((height, width, 3), 118, dtype=np.uint8))]

    params = ['-p', f'state_file:={workdir / "state.pt"}', '-p', 'diagnostics_period:=1.0']
    for item in args.param:
        params += ['-p', item]
    command = [sys.executable, '-m', 'ros2_latent_replay.node', '--ros-args',
               '--params-file', str(REPO / 'config' / 'params.yaml'), *params]
    log_path = workdir / 'node.log'
    log = open(log_path, 'w')
    process = subprocess.Popen(command, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ), start_new_session=True)
    node_ps = psutil.Process(process.pid)

    rclpy.init()
    client = rclpy.create_node('soak_operator')
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    camera = client.create_publisher(Image, 'image', qos_profile_sensor_data)
    label_pub = client.create_publisher(
        String, 'label', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    services = {name: client.create_client(Trigger, f'{NODE}/{name}')
                for name in ('learn', 'predict')}
    status = {}

    def on_status(msg):
        for item in msg.status:
            if item.hardware_id == NODE:
                status.clear()
                status.update({kv.key: kv.value for kv in item.values})
    client.create_subscription(DiagnosticArray, '/diagnostics', on_status, 10)

    def alive():
        if process.poll() is not None:
            raise RuntimeError(f'the node exited with code {process.returncode}; see {log_path}')

    print(f'soak: {args.minutes:g} min, camera {width}x{height} at {args.fps:g} fps, '
          f'{len(names)} objects ({description}), node log {log_path}', flush=True)
    deadline = time.monotonic() + 300.0
    while not (all(c.service_is_ready() for c in services.values()) and status
               and camera.get_subscription_count() > 0):
        alive()
        if time.monotonic() > deadline:
            raise RuntimeError('the node did not come up')
        executor.spin_once(timeout_sec=0.05)

    samples, window = [], Window()
    published = 0
    started = time.monotonic()
    end = started + args.minutes * 60.0
    next_frame = next_sample = started
    next_predict = started
    next_teach = started + 2.0
    teaching, learn_future, learn_sent = None, None, 0.0
    predict_future, predict_sent = None, 0.0
    episode = 0
    stamp = 0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            # ---- camera
            if now >= next_frame:
                pool = messages[teaching] if teaching else idle
                msg = pool[published % len(pool)]
                stamp += 1
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
                camera.publish(msg)
                published += 1
                next_frame += 1.0 / args.fps
                if next_frame < now:               # fell behind: do not burst
                    next_frame = now + 1.0 / args.fps
            # ---- operator: show an object under its label, then ~/learn
            if teaching is None and now >= next_teach:
                if learn_future is not None and not learn_future.done():
                    window.learn_busy += 1         # the previous step still runs: skip
                else:
                    teaching = names[episode % len(names)]
                    episode += 1
                    label_pub.publish(String(data=teaching))
                    teach_until = now + args.teach_seconds
                next_teach = now + args.teach_every
            if teaching is not None and now >= teach_until:
                label_pub.publish(String(data=''))
                teaching = None
                learn_future, learn_sent = services['learn'].call_async(Trigger.Request()), now
            if learn_future is not None and learn_future.done() and learn_sent:
                body = json.loads(learn_future.result().message)
                if learn_future.result().success:
                    window.learn_ok += 1
                    window.learn_seconds.append(body['seconds'])
                elif body.get('error') == 'busy':
                    window.learn_busy += 1
                else:
                    window.learn_failed += 1
                    print(f'learn failed: {body}', flush=True)
                learn_sent = 0.0
            # ---- predictions
            if predict_future is None and now >= next_predict:
                predict_future, predict_sent = services['predict'].call_async(
                    Trigger.Request()), now
                next_predict = now + 1.0 / args.predict_hz
            if predict_future is not None and predict_future.done():
                body = json.loads(predict_future.result().message)
                if predict_future.result().success:
                    window.round_trips.append((time.monotonic() - predict_sent) * 1000.0)
                    window.node_latencies.append(body['latency_ms'])
                elif body.get('error') != 'not_trained':
                    window.predict_failed += 1
                    kind = body.get('error', '?')
                    window.predict_errors[kind] = window.predict_errors.get(kind, 0) + 1
                predict_future = None
            # ---- samples
            if now >= next_sample:
                alive()
                with node_ps.oneshot():
                    rss = node_ps.memory_info().rss
                    threads = node_ps.num_threads()
                    fds = node_ps.num_fds()
                sample = {
                    't': round(now - started, 2), 'rss_mb': round(rss / 2**20, 1),
                    'threads': threads, 'fds': fds, 'published': published,
                    'received': int(status.get('frames_received', 0)),
                    'collected': int(status.get('frames_collected', 0)),
                    'dropped_worker': int(status.get('frames_dropped', 0)),
                    'dropped_cap': int(status.get('episode_dropped', 0)),
                    'rejected': int(status.get('frames_rejected', 0)),
                    'callback_errors': int(status.get('callback_errors', 0)),
                    'steps': int(status.get('steps', 0)),
                    'replay_fill': int(status.get('replay_fill', 0)),
                    'predict_rt_p50_ms': percentile(window.round_trips, 50),
                    'predict_rt_p95_ms': percentile(window.round_trips, 95),
                    'predict_rt_max_ms': max(window.round_trips, default=None),
                    'predict_node_p50_ms': percentile(window.node_latencies, 50),
                    'predict_node_p95_ms': percentile(window.node_latencies, 95),
                    'predicts': len(window.round_trips),
                    'predict_failed': window.predict_failed,
                    'predict_errors': window.predict_errors,
                    'learn_ok': window.learn_ok, 'learn_busy': window.learn_busy,
                    'learn_failed': window.learn_failed,
                    'learn_seconds_mean': statistics.fmean(window.learn_seconds)
                    if window.learn_seconds else None,
                }
                samples.append(sample)
                window = Window()
                next_sample = now + args.sample_every
                if len(samples) % 12 == 1:
                    print(f'{sample["t"]:7.0f} s  rss {sample["rss_mb"]:7.1f} MB  steps '
                          f'{sample["steps"]:4d}  predicts {sample["predicts"]:3d}  received '
                          f'{sample["received"]}/{published}', flush=True)
            executor.spin_once(timeout_sec=max(0.0, min(next_frame, next_predict)
                                               - time.monotonic()))

        # ---- after the soak: does it still recognise the objects?
        if learn_future is not None:
            wait_until = time.monotonic() + 600.0
            while not learn_future.done() and time.monotonic() < wait_until:
                executor.spin_once(timeout_sec=0.05)
        hits = total = 0
        for name in names:
            for frame in test[name]:
                stamp += 1
                msg = image_message(frame, stamp_ns=stamp)
                for _ in range(50):
                    camera.publish(msg)
                    future = services['predict'].call_async(Trigger.Request())
                    while not future.done():
                        executor.spin_once(timeout_sec=0.05)
                    body = json.loads(future.result().message)
                    if future.result().success and abs(body['stamp'] - stamp * 1e-9) < 1e-10:
                        hits += body['label'] == name
                        total += 1
                        break
        accuracy = hits / total if total else None
    finally:
        client.destroy_node()
        rclpy.shutdown()
        exit_code = None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                exit_code = process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        else:
            exit_code = process.returncode
        log.close()
    leftovers = [n for n in os.listdir('/dev/shm') if n.startswith(f'ros2lr_{process.pid}_')] \
        if os.path.isdir('/dev/shm') else []

    report = summarise(args, samples, accuracy, exit_code, leftovers, description,
                       (width, height))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'soak.json').write_text(json.dumps(report, indent=1) + '\n')
    plot(samples, report, out / 'soak.png')
    print(json.dumps(report['summary'], indent=1))
    print(f'wrote {out / "soak.json"} and {out / "soak.png"}')
    return 0 if exit_code == 0 and not leftovers else 1


def _slope_per_hour(samples, key):
    """Least-squares slope of ``key`` over the second half of the run, per hour."""
    half = [s for s in samples[len(samples) // 2:] if s[key] is not None]
    if len(half) < 3:
        return None
    t = np.array([s['t'] for s in half]) / 3600.0
    y = np.array([s[key] for s in half], dtype=float)
    return float(np.polyfit(t, y, 1)[0])


def rss_floors(samples, windows=8):
    """Lowest node RSS (MB) in each of ``windows`` equal time windows.

    Memory rises while a learning step runs and falls back after it, so single samples
    depend on when they fall; the floor of each window is the memory the node keeps.
    """
    if not samples:
        return []
    span = samples[-1]['t'] / windows or 1.0
    floors = [[] for _ in range(windows)]
    for sample in samples:
        floors[min(windows - 1, int(sample['t'] / span))].append(sample['rss_mb'])
    return [min(values) if values else None for values in floors]


def summarise(args, samples, accuracy, exit_code, leftovers, description, size):
    """Build the JSON report: settings, every sample and a summary."""
    third = max(1, len(samples) // 3)
    floors = rss_floors(samples)
    first, last = samples[:third], samples[-third:]

    def mean(rows, key):
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.fmean(values), 2) if values else None
    final = samples[-1] if samples else {}
    summary = {
        'minutes': round(final.get('t', 0.0) / 60.0, 2),
        'rss_mb_first_third': mean(first, 'rss_mb'), 'rss_mb_last_third': mean(last, 'rss_mb'),
        'rss_mb_max': max((s['rss_mb'] for s in samples), default=None),
        'rss_mb_per_hour_second_half': _slope_per_hour(samples, 'rss_mb'),
        'rss_mb_floor_per_eighth': floors,
        'rss_mb_floor_growth_second_half': round(floors[-1] - floors[len(floors) // 2], 1)
        if floors and floors[-1] is not None and floors[len(floors) // 2] is not None
        else None,
        'threads_first_last': [samples[0]['threads'], final['threads']] if samples else None,
        'fds_first_last': [samples[0]['fds'], final['fds']] if samples else None,
        'predict_rt_p50_ms_first_third': mean(first, 'predict_rt_p50_ms'),
        'predict_rt_p50_ms_last_third': mean(last, 'predict_rt_p50_ms'),
        'predict_rt_p95_ms_first_third': mean(first, 'predict_rt_p95_ms'),
        'predict_rt_p95_ms_last_third': mean(last, 'predict_rt_p95_ms'),
        'predict_node_p50_ms_last_third': mean(last, 'predict_node_p50_ms'),
        'predicts': sum(s['predicts'] for s in samples),
        'predict_failed': sum(s['predict_failed'] for s in samples),
        'predict_errors': {k: sum(s['predict_errors'].get(k, 0) for s in samples)
                           for k in sorted({k for s in samples for k in s['predict_errors']})},
        'frames_published': final.get('published'), 'frames_received': final.get('received'),
        'frames_dropped_by_the_worker': final.get('dropped_worker'),
        'callback_errors': final.get('callback_errors'),
        'learn_ok': sum(s['learn_ok'] for s in samples),
        'learn_busy_or_skipped': sum(s['learn_busy'] for s in samples),
        'learn_failed': sum(s['learn_failed'] for s in samples),
        'learn_seconds_first_third': mean(first, 'learn_seconds_mean'),
        'learn_seconds_last_third': mean(last, 'learn_seconds_mean'),
        'steps': final.get('steps'), 'replay_fill': final.get('replay_fill'),
        'held_out_accuracy': accuracy, 'exit_code': exit_code,
        'shared_memory_left': leftovers,
    }
    return {'settings': {**vars(args), 'frame_size': list(size), 'photos': description},
            'summary': summary, 'samples': samples}


def plot(samples, report, path):
    """Four panels over time: memory, predict latency, frames, learning."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if not samples:
        return
    t = np.array([s['t'] for s in samples]) / 60.0

    def series(key):
        return np.array([np.nan if s[key] is None else s[key] for s in samples], dtype=float)
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    axes[0].plot(t, series('rss_mb'), label='node RSS (MB)')
    floors = rss_floors(samples)
    edges = np.linspace(0.0, t[-1], len(floors) + 1)
    axes[0].hlines(floors, edges[:-1], edges[1:], colors='tab:red',
                   label='floor per eighth of the run')
    axes[0].set_ylabel('MB')
    twin = axes[0].twinx()
    twin.plot(t, series('threads'), color='tab:gray', linestyle=':', label='threads')
    twin.plot(t, series('fds'), color='tab:olive', linestyle=':', label='open files')
    twin.set_ylabel('count')
    axes[0].legend(loc='upper left')
    twin.legend(loc='lower right')
    axes[1].plot(t, series('predict_rt_p50_ms'), label='~/predict round trip p50')
    axes[1].plot(t, series('predict_rt_p95_ms'), label='round trip p95')
    axes[1].plot(t, series('predict_node_p50_ms'), label='in the node p50')
    axes[1].set_ylabel('ms')
    axes[1].legend(loc='upper left')
    published, received = series('published'), series('received')
    dt = np.diff(t * 60.0, prepend=np.nan)
    axes[2].plot(t, np.diff(published, prepend=np.nan) / dt, label='published fps')
    axes[2].plot(t, np.diff(received, prepend=np.nan) / dt, label='received fps')
    axes[2].plot(t, np.diff(published - received, prepend=np.nan) / dt,
                 label='lost in transport /s')
    axes[2].plot(t, np.diff(series('dropped_worker'), prepend=np.nan) / dt,
                 label='dropped, worker behind /s')
    axes[2].set_ylabel('frames / s')
    axes[2].legend(loc='center left')
    axes[3].plot(t, series('learn_seconds_mean'), 'o-', markersize=3,
                 label='learning step (s)')
    axes[3].set_ylabel('s')
    twin = axes[3].twinx()
    twin.plot(t, series('replay_fill'), color='tab:gray', linestyle=':', label='replay fill')
    twin.set_ylabel('patterns')
    axes[3].legend(loc='upper left')
    twin.legend(loc='lower right')
    axes[3].set_xlabel('minutes')
    s = report['summary']
    fig.suptitle(f'latent_replay_node soak, {s["minutes"]} min: {s["steps"]} learning steps, '
                 f'{s["predicts"]} predictions, RSS {s["rss_mb_first_third"]} -> '
                 f'{s["rss_mb_last_third"]} MB')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == '__main__':
    sys.exit(main())
