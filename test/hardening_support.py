"""Helpers of the hardening tests: a node launcher that restarts fast, a remote client, RSS.

:class:`NodeLauncher` is a *zygote*: a helper process that imports torch, timm and the core
once, then forks a fresh ``latent_replay_node`` process (the real ``node.main``) per request,
each in its own session and process group. A forked node is up in 1-2 s instead of the
8-10 s a cold ``python -m ros2_latent_replay.node`` takes on a loaded 2-core machine, which
is what lets the crash test kill and restart the node 20 times within its budget. The zygote
only imports modules that start no thread (it checks), so forking it is safe.

:class:`RemoteNode` talks to one such node process over real DDS from a client node in the
test process; each start gets its own namespace, so requests never go to a killed
predecessor whose endpoints discovery still remembers.
"""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent

#: the node configuration of the hardening tests where the defaults do not matter
#: (one torch thread: oversubscribed threads are several times slower on a shared machine)
HARDENED = {'epochs': 1, 'replay_size': 64, 'max_classes': 8, 'threads': 1,
            'diagnostics_period': 0.2, 'prediction_rate': 10.0}


def learner_values(values):
    """Return the LearnerConfig fields among node parameter ``values``."""
    from ros2_latent_replay.core.config import LearnerConfig
    return {k: v for k, v in values.items() if k in LearnerConfig.__dataclass_fields__}


def ros_arg(name, value):
    """``name:=value`` as the ROS command line wants it."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f'{name}:={text}'


def dead_segments(pids):
    """Replay segments in /dev/shm that belong to any of ``pids``."""
    if not os.path.isdir('/dev/shm'):
        return []
    prefixes = tuple(f'ros2lr_{pid}_' for pid in pids)
    return sorted(name for name in os.listdir('/dev/shm') if name.startswith(prefixes))


def temp_files(state_file):
    """Temporary files a save of ``state_file`` may leave next to it."""
    state_file = Path(state_file)
    prefix = '.' + state_file.name + '.'
    return sorted(p.name for p in state_file.parent.glob('.*')
                  if p.name.startswith(prefix) and p.name.endswith('.tmp'))


# ---------------------------------------------------------------------- the zygote
def _zygote_main():
    """Run in the launcher process: preload, then fork node processes on request.

    Only modules that start no thread when imported are preloaded (numpy's OpenBLAS pool
    is kept to the calling thread); rclpy and ONNX Runtime, which start threads, load in
    each child after the fork (0.1 s).
    """
    os.environ['OPENBLAS_NUM_THREADS'] = '1'
    sys.path.insert(0, str(REPO))
    import numpy  # noqa: F401  (preloaded for the children)
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from ros2_latent_replay.core import backbones, frozen_runtime, learner  # noqa: F401
    threads = len(os.listdir('/proc/self/task'))
    children = {}
    out = sys.stdout
    out.write(json.dumps({'ready': True, 'threads': threads}) + '\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request['cmd'] == 'start':
            pid = os.fork()
            if pid == 0:   # the node process
                code = 1
                try:
                    os.setsid()
                    log = os.open(request['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                    devnull = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(devnull, 0)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    sys.stdin = open(os.devnull)
                    from ros2_latent_replay import node as node_module
                    code = node_module.main(['latent_replay_node'] + request['args'])
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:  # noqa: B902 - report, then leave without cleanup
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children[pid] = None
            reply = {'pid': pid}
        elif request['cmd'] == 'wait':
            pid, deadline = request['pid'], time.monotonic() + request['timeout']
            status = None
            while status is None and time.monotonic() < deadline:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
                else:
                    time.sleep(0.01)
            if status is not None:
                children.pop(pid, None)
            reply = {'pid': pid, 'status': status}
        else:
            reply = {'error': f'unknown command {request["cmd"]!r}'}
        out.write(json.dumps(reply) + '\n')
        out.flush()
    for pid in list(children):   # stdin closed: end every node still running
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


class NodeLauncher:
    """Fork ``latent_replay_node`` processes from a preloaded launcher process."""

    def __init__(self, log_dir):
        """Start the launcher (it imports torch and the node: a few seconds)."""
        from conftest import start_process
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        code = ('import sys; sys.path.insert(0, sys.argv[1]); '
                'import hardening_support; hardening_support._zygote_main()')
        self.process = start_process([sys.executable, '-c', code, str(TEST_DIR)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=str(REPO))
        ready = self._read(180.0)
        assert ready.get('ready'), ready
        assert ready['threads'] == 1, f'the launcher runs {ready["threads"]} threads: ' \
                                      'forking it would not be safe'
        self.started = []

    def _read(self, timeout):
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, 'the node launcher did not answer'
        line = self.process.stdout.readline()
        assert line, f'the node launcher exited ({self.process.poll()})'
        return json.loads(line)

    def _ask(self, request, timeout=30.0):
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        return self._read(timeout)

    def start(self, args, log_name):
        """Fork a node with ROS ``args`` (after the program name); return its pid."""
        import conftest
        pid = self._ask({'cmd': 'start', 'args': list(args),
                         'log': str(self.log_dir / log_name)})['pid']
        conftest._started_pids.add(pid)   # the session's leftover check covers it too
        self.started.append(pid)
        return pid

    def wait(self, pid, timeout=30.0):
        """Reap node ``pid``; return its exit code (negative = signal), None if it still runs."""
        return self._ask({'cmd': 'wait', 'pid': pid, 'timeout': timeout}, timeout + 10.0)[
            'status']

    def close(self):
        """Stop the launcher; it kills and reaps any node still running."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process.stdout.close()


# ---------------------------------------------------------------------- the client side
class RemoteNode:
    """A forked node process in namespace ``ns`` and the client endpoints to reach it."""

    def __init__(self, client, launcher, ns, state_file, log_name, **params):
        """Fork the node with ``params``; create publishers and clients in ``ns``."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        self.client, self.ns = client, ns
        self.fqn = f'/{ns}/latent_replay_node'
        args = ['--ros-args', '-r', f'__ns:=/{ns}', '-p', ros_arg('state_file', state_file)]
        for name, value in params.items():
            args += ['-p', ros_arg(name, value)]
        self.pid = launcher.start(args, log_name)
        self.log = launcher.log_dir / log_name
        # the frames go out through a participant of this node's own (see :class:`Camera`)
        self.camera = Camera(f'camera_{ns}')
        self.image_pub = self.camera.node.create_publisher(
            Image, f'/{ns}/image', QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE))
        self.label_pub = client.node.create_publisher(
            String, f'/{ns}/label', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.services = {name: client.node.create_client(Trigger, f'{self.fqn}/{name}')
                         for name in ('learn', 'predict', 'save', 'reset')}
        self.stamp = 0

    @property
    def status(self):
        """The node's newest /diagnostics values ({} before the first)."""
        return self.client.status.get(self.fqn, {})

    def wait_ready(self, timeout=120.0):
        """Wait until services, topics and a /diagnostics report of this node are there."""
        self.client.wait(lambda: all(c.service_is_ready() for c in self.services.values())
                         and self.image_pub.get_subscription_count() > 0
                         and self.label_pub.get_subscription_count() > 0 and self.status,
                         timeout, f'node {self.fqn} to come up (log {self.log})')

    def call_async(self, name):
        """Start a Trigger call; return its future."""
        from std_srvs.srv import Trigger
        return self.services[name].call_async(Trigger.Request())

    def call(self, name, timeout=120.0):
        """Call a Trigger service; return (success, JSON body)."""
        future = self.call_async(name)
        self.client.wait(future.done, timeout, f'{self.fqn}/{name} to answer')
        return future.result().success, json.loads(future.result().message)

    def publish(self, frame):
        """Publish one RGB frame with the next stamp; return the stamp in seconds."""
        from ros2_latent_replay.demo import image_message
        self.stamp += 1
        self.image_pub.publish(image_message(frame, stamp_ns=self.stamp))
        return self.stamp * 1e-9

    def destroy(self):
        """Remove this node's client endpoints (the process is the caller's business)."""
        node = self.client.node
        node.destroy_publisher(self.label_pub)
        for service in self.services.values():
            node.destroy_client(service)
        self.camera.close()


class Camera:
    """A participant of its own that publishes one node's camera frames.

    Seen in the crash test on a loaded machine: once a few nodes had been killed with
    SIGKILL, a writer that had sent them frames delivered no more frames to the next node
    for minutes, while its labels and service calls still arrived. Fast DDS passes a
    sample to a reader on the same machine as a buffer in the writer's shared-memory
    segment (0.5 MB, ten 128x128 frames), and a killed reader never returns the buffers
    queued to it, which would explain it. A participant per node process, removed with
    it, gives every restart a fresh segment; with it the failure was not seen again.
    """

    def __init__(self, name):
        """Create a context and a node to hold the image publisher."""
        import rclpy
        from rclpy.context import Context
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)

    def close(self):
        """Destroy the node and shut the context down."""
        import rclpy
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


class ClientNode:
    """A client node in this process, spun on demand, collecting /diagnostics per node."""

    def __init__(self, name='hardening_client'):
        """Create a context and a node listening to /diagnostics."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.status = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_status, 50)

    def _on_status(self, msg):
        for item in msg.status:
            self.status[item.hardware_id] = {kv.key: kv.value for kv in item.values}

    def spin(self, seconds):
        """Process callbacks for about ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.01, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return

    def wait(self, condition, timeout=60.0, what='condition'):
        """Spin until ``condition()`` is true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            assert time.monotonic() < deadline, f'timed out after {timeout:.0f} s waiting ' \
                                                f'for {what() if callable(what) else what}'
            self.executor.spin_once(timeout_sec=0.01)

    def close(self):
        """Destroy the node and shut the context down."""
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


# ---------------------------------------------------------------------- memory
class RssSampler:
    """Sample the resident memory of a process every ``interval`` seconds in a thread."""

    def __init__(self, pid=None, interval=0.02):
        """Start sampling ``pid`` (default: this process)."""
        import psutil
        self._process = psutil.Process(pid or os.getpid())
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self.samples = []           # (seconds since the start, resident bytes)
        self._started = time.monotonic()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss
            except Exception:  # noqa: B902 - the process may be gone
                return
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic() - self._started, rss))
            self._stop.wait(self._interval)

    def stop(self):
        """Stop sampling; return the peak growth over the baseline in bytes."""
        self._stop.set()
        self._thread.join(5.0)
        return self.peak - self.baseline

    def peak_between(self, start, end):
        """Highest growth over the baseline sampled between ``start`` and ``end`` seconds."""
        values = [rss for t, rss in self.samples if start <= t < end]
        return max(values, default=self.baseline) - self.baseline


# ---------------------------------------------------------------------- storm clients
def _storm_client_main(target, plan_json, out_path):
    """Run in a client process: fire the calls of the plan, record each answer.

    The plan lists ``[service, offset]``: each call starts ``offset`` seconds after the
    services were found, without waiting for earlier answers.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger
    plan = json.loads(plan_json)
    rclpy.init()
    node = rclpy.create_node(f'storm_client_{os.getpid()}')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    # a client keeping more than 10 calls in flight needs a deeper queue on its side too:
    # rclpy's default (KEEP_LAST 10) drops the oldest of a burst of answers
    qos = QoSProfile(depth=max(10, len(plan)), reliability=ReliabilityPolicy.RELIABLE)
    clients = {name: node.create_client(Trigger, f'{target}/{name}', qos_profile=qos)
               for name in sorted({name for name, _ in plan})}
    deadline = time.monotonic() + 60.0
    while not all(c.service_is_ready() for c in clients.values()):
        assert time.monotonic() < deadline, 'services not found'
        executor.spin_once(timeout_sec=0.05)
    started = time.monotonic()
    futures = []
    for name, offset in sorted(plan, key=lambda call: call[1]):
        while time.monotonic() < started + offset:
            executor.spin_once(timeout_sec=0.005)
        futures.append((name, clients[name].call_async(Trigger.Request())))
    deadline = time.monotonic() + 120.0
    while not all(f.done() for _, f in futures) and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    results = [{'service': name, 'answered': f.done(),
                'success': f.result().success if f.done() else None,
                'message': f.result().message if f.done() else None} for name, f in futures]
    Path(out_path).write_text(json.dumps({'seconds': time.monotonic() - started,
                                          'results': results}))
    node.destroy_node()
    rclpy.shutdown()


def start_storm_client(target, plan, out_path):
    """Start a storm client process calling ``plan`` (see above) on node ``target``."""
    from conftest import start_process
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import hardening_support; '
            'hardening_support._storm_client_main(*sys.argv[2:])')
    return start_process([sys.executable, '-c', code, str(TEST_DIR), target, json.dumps(plan),
                          str(out_path)], cwd=str(REPO), stdout=subprocess.DEVNULL)
