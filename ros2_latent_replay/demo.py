"""Demo: teach latent_replay_node a few real objects over ROS 2, then test it on other views.

Starts the node as a separate process (embedded EfficientNet-Lite0 weights, a fresh
temporary state file), plays each object's training views on ``image`` while its name is on
``label``, calls ``~/learn`` after each object, then shows views it has not seen, asks
``~/predict`` and prints the accuracy. Photos: COIL-100 turntable objects from
``../shared/data/coil100`` when present, else scikit-image's sample photos seen from
several synthetic viewpoints (crop, scale, rotation, mirror, lighting). Discovery stays on
this machine, on a ROS domain id of the demo's own.

    latent-replay-demo [--data auto|skimage|coil100] [--objects 5]
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import ros_env
from .image_conversion import rgb_to_image_fields

REPO = Path(__file__).resolve().parents[1]
COIL_DIR = REPO.parent / 'shared' / 'data' / 'coil100' / 'images'
VIEW_SIZE = (160, 120)   # width, height of the synthetic camera frames

Views = Dict[str, Tuple[List[np.ndarray], List[np.ndarray]]]


# ---------------------------------------------------------------------- photos
def skimage_photos() -> Dict[str, np.ndarray]:
    """Named colour photographs that ship inside scikit-image (no download)."""
    from skimage import data
    return {
        'cat': data.chelsea(),
        'coffee': data.coffee(),
        'astronaut': data.astronaut(),
        'rocket': data.rocket(),
        'motorcycle': data.stereo_motorcycle()[0],
    }


def synthetic_view(photo: np.ndarray, rng: np.random.Generator,
                   size: Tuple[int, int] = VIEW_SIZE) -> np.ndarray:
    """One camera-like view of ``photo``: random crop/scale/rotation/mirror/lighting."""
    from PIL import Image
    image = Image.fromarray(photo)
    angle = float(rng.uniform(-20.0, 20.0))
    image = image.rotate(angle, resample=Image.BILINEAR, expand=False)
    width, height = image.size
    scale = float(rng.uniform(0.55, 0.9))
    crop_w = int(min(width, height * size[0] / size[1]) * scale)
    crop_h = int(crop_w * size[1] / size[0])
    left = int(rng.integers(0, max(1, width - crop_w)))
    top = int(rng.integers(0, max(1, height - crop_h)))
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) * float(rng.uniform(0.75, 1.25))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def skimage_views(objects: int, train: int, test: int, seed: int = 0) -> Views:
    """Training and held-out synthetic views of ``objects`` scikit-image photos."""
    photos = skimage_photos()
    names = list(photos)[:objects]
    views = {}
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        every = [synthetic_view(photos[name], rng) for _ in range(train + test)]
        views[name] = (every[:train], every[train:])
    return views


def coil_views(objects: int, train: int, test: int, directory: Path = COIL_DIR) -> Views:
    """COIL-100 views: training angles != 10 mod 20, held-out angles = 10 mod 20 degrees."""
    from PIL import Image
    pattern = re.compile(r'obj(\d+)__(\d+)\.png$')
    angles: Dict[int, List[int]] = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            angles.setdefault(int(match.group(1)), []).append(int(match.group(2)))
    views = {}
    for obj in sorted(angles)[:objects]:
        have = sorted(angles[obj])
        train_angles = [a for a in have if a % 20 != 10]
        test_angles = [a for a in have if a % 20 == 10]
        train_angles = train_angles[::max(1, len(train_angles) // train)][:train]
        test_angles = test_angles[::max(1, len(test_angles) // test)][:test]

        def load(angle: int, obj: int = obj) -> np.ndarray:
            with Image.open(directory / f'obj{obj}__{angle}.png') as image:
                return np.asarray(image.convert('RGB'))
        views[f'object {obj}'] = ([load(a) for a in train_angles],
                                  [load(a) for a in test_angles])
    return views


def choose_views(source: str, objects: int, train: int, test: int) -> Tuple[str, Views]:
    """Pick the photo source ('auto' = COIL-100 when present) and build the views."""
    if source == 'coil100' or (source == 'auto' and COIL_DIR.is_dir()):
        if not COIL_DIR.is_dir():
            raise SystemExit(f'COIL-100 images not found at {COIL_DIR}')
        return 'COIL-100 turntable photos', coil_views(objects, train, test)
    return 'scikit-image sample photos, synthetic viewpoints', skimage_views(
        objects, train, test)


# ---------------------------------------------------------------------- ROS client side
def image_message(rgb: np.ndarray, encoding: str = 'rgb8', stamp_ns: int = 0,
                  frame_id: str = 'camera') -> Any:
    """Build a sensor_msgs/Image holding ``rgb`` in ``encoding``."""
    from sensor_msgs.msg import Image
    msg = Image(**rgb_to_image_fields(rgb, encoding))
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return msg


class TeachingClient:
    """Client side of the node's interface: topics, services and /diagnostics."""

    def __init__(self, node: Any, target: str = '/latent_replay_node') -> None:
        """Create publishers, clients and a /diagnostics listener on ``node``."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        self.node = node
        self._string = String
        self.image_pub = node.create_publisher(
            Image, 'image', QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE))
        self.label_pub = node.create_publisher(
            String, 'label', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.clients = {name: node.create_client(Trigger, f'{target}/{name}')
                        for name in ('learn', 'predict', 'save', 'reset')}
        self.status: Dict[str, str] = {}
        self._target = target.strip('/')
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self._trigger = Trigger

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id.strip('/') == self._target:
                self.status = {kv.key: kv.value for kv in status.values}

    def publish_label(self, text: str) -> None:
        """Publish the teaching label ('' stops collecting)."""
        self.label_pub.publish(self._string(data=text))

    def wait_until(self, condition: Callable[[], bool], timeout: float,
                   spin: Callable[[float], None]) -> bool:
        """Spin until ``condition()`` holds or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            spin(0.05)
        return True

    def call(self, name: str, spin: Callable[[float], None], timeout: float = 300.0
             ) -> Tuple[bool, Dict[str, Any]]:
        """Call a Trigger service; return (success, parsed JSON message)."""
        future = self.clients[name].call_async(self._trigger.Request())
        if not self.wait_until(future.done, timeout, spin):
            raise TimeoutError(f'~/{name} did not answer within {timeout:.0f} s')
        response = future.result()
        try:
            body = json.loads(response.message)
        except ValueError:
            body = {'detail': response.message}
        return response.success, body


# ---------------------------------------------------------------------- the demo
def _node_command(state_file: str) -> List[str]:
    command = [sys.executable, '-m', 'ros2_latent_replay.node', '--ros-args']
    params = REPO / 'config' / 'params.yaml'
    if params.is_file():
        command += ['--params-file', str(params)]
    return command + ['-p', f'state_file:={state_file}', '-p', 'diagnostics_period:=0.2',
                      '-p', 'prediction_rate:=0.0', '--log-level', 'warn']


def run(source: str = 'auto', objects: int = 5, train_views: int = 12, test_views: int = 6,
        startup_timeout: float = 180.0) -> float:
    """Run the demo; return the accuracy on held-out views."""
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix='ros2lr_demo_')
    ros_env.isolate(os.environ, log_dir=os.path.join(workdir, 'log'))
    os.environ.setdefault('MALLOC_MMAP_MAX_', '0')
    os.environ.setdefault('MALLOC_TRIM_THRESHOLD_', '1000000000')
    description, views = choose_views(source, objects, train_views, test_views)
    print(f'ros2_latent_replay demo: {len(views)} objects ({description}), '
          f'{train_views} teaching views and {test_views} unseen views each')
    print(f'ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]}, discovery on localhost only; '
          f'state in {workdir}')

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    process = subprocess.Popen(_node_command(os.path.join(workdir, 'state.pt')),
                               env=dict(os.environ), start_new_session=True)
    rclpy.init()
    node = Node('latent_replay_demo')
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin(seconds: float) -> None:
        executor.spin_once(timeout_sec=seconds)
        if process.poll() is not None:
            raise RuntimeError(f'the node exited with code {process.returncode}')

    client = TeachingClient(node)
    correct = total = 0
    try:
        print('starting latent_replay_node (builds the network) ...', flush=True)
        if not client.wait_until(lambda: all(c.service_is_ready() for c in
                                             client.clients.values()) and client.status,
                                 startup_timeout, spin):
            raise TimeoutError('the node did not come up in time')
        print(f'node ready after {time.monotonic() - started:.1f} s')
        stamp = 1
        for name, (train, _) in views.items():
            collected = int(client.status.get('frames_collected', 0))
            client.publish_label(name)
            client.wait_until(lambda n=name: client.status.get('label') == n, 10.0, spin)
            for frame in train:
                collected = _teach_frame(client, frame, stamp, collected, spin)
                stamp += 1
            client.publish_label('')
            client.wait_until(lambda: client.status.get('label') == '', 10.0, spin)
            ok, body = client.call('learn', spin)
            if not ok:
                raise RuntimeError(f'learn failed: {body}')
            print(f'  learned {name!r}: {body.get("frames")} frames in '
                  f'{body.get("seconds", 0.0):.2f} s; knows {body.get("known_classes")} '
                  f'classes, replay memory {body.get("replay_fill")}/'
                  f'{body.get("replay_capacity")}')
        print('testing on views it has not seen:')
        for name, (_, test) in views.items():
            hits = []
            for frame in test:
                answer = _predict_frame(client, frame, stamp, spin)
                stamp += 1
                hits.append(answer.get('label') == name)
                if answer.get('label') != name:
                    print(f'    {name!r} view taken for {answer.get("label")!r} '
                          f'({answer.get("confidence", 0.0):.2f})')
            correct += sum(hits)
            total += len(hits)
            print(f'  {name!r}: {sum(hits)}/{len(hits)} correct')
    finally:
        node.destroy_node()
        rclpy.shutdown()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    accuracy = correct / max(1, total)
    print(f'accuracy on unseen views: {correct}/{total} = {accuracy:.0%} '
          f'(chance {1 / max(1, len(views)):.0%}); demo took '
          f'{time.monotonic() - started:.0f} s')
    return accuracy


def _teach_frame(client: TeachingClient, frame: np.ndarray, stamp: int, collected: int,
                 spin: Callable[[float], None], attempts: int = 5) -> int:
    """Publish one teaching frame until the node's diagnostics count it; return the count.

    The node subscribes to images best effort with a short queue, as camera topics are; a
    frame that arrives while its executor is busy can be lost, so it is sent again.
    """
    for _ in range(attempts):
        client.image_pub.publish(image_message(frame, stamp_ns=stamp))
        if client.wait_until(lambda: int(client.status.get('frames_collected', 0)) > collected,
                             3.0, spin):
            return int(client.status['frames_collected'])
    raise TimeoutError(f'the node did not collect a teaching frame in {attempts} attempts')


def _predict_frame(client: TeachingClient, frame: np.ndarray, stamp: int,
                   spin: Callable[[float], None]) -> Dict[str, Any]:
    """Publish ``frame`` and ask ~/predict until the answer is about this frame."""
    expected = stamp * 1e-9
    for _ in range(20):
        client.image_pub.publish(image_message(frame, stamp_ns=stamp))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            ok, body = client.call('predict', spin, timeout=30.0)
            if ok and abs(float(body.get('stamp', -1.0)) - expected) < 1e-10:
                return body
            spin(0.02)
    raise TimeoutError('the node never classified the test frame')


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point ``latent-replay-demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', choices=('auto', 'skimage', 'coil100'), default='auto',
                        help='photo source (auto = COIL-100 when ../shared/data has it)')
    parser.add_argument('--objects', type=int, default=5, help='objects to teach')
    parser.add_argument('--train-views', type=int, default=12, help='teaching views each')
    parser.add_argument('--test-views', type=int, default=6, help='held-out views each')
    args = parser.parse_args(argv)
    accuracy = run(args.data, args.objects, args.train_views, args.test_views)
    return 0 if accuracy > 0.0 else 1


if __name__ == '__main__':
    sys.exit(main())
