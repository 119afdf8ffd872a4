"""CallbackPoolExecutor on real rclpy: callback groups, errors, futures, one queueing per task."""

import collections
import threading
import time

import pytest
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.context import Context
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ros2_latent_replay.callback_executor import CallbackPoolExecutor


@pytest.fixture
def ros():
    """Yield a private rclpy context's node, a CallbackPoolExecutor for it, a spin thread."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node('executor_test', context=context)
    executor = CallbackPoolExecutor(num_threads=4, context=context)
    executor.add_node(node)
    errors = []

    def spin():
        try:
            executor.spin()
        except Exception as exc:  # noqa: B902 - the test looks at what came out
            errors.append(exc)

    thread = threading.Thread(target=spin, daemon=True)
    yield node, executor, thread, errors
    executor.shutdown(timeout_sec=5.0)
    if thread.ident is not None:    # some tests spin in the test thread instead
        thread.join(10.0)
    node.destroy_node()
    rclpy.shutdown(context=context)
    assert not thread.is_alive(), 'the spin thread did not end'


def wait_until(condition, timeout=20.0):
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError('condition not reached in time')


def count_submissions(executor):
    """Count how often each task is handed to the worker pool (tasks are kept alive)."""
    counts = collections.Counter()
    keep = []       # so that no id is reused by a later task
    submit = executor._pool.submit

    def counting_submit(fn, task):
        keep.append(task)
        counts[id(task)] += 1
        return submit(fn, task)

    executor._pool.submit = counting_submit
    return counts


def test_rejects_a_single_worker():
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match='at least 2'):
            CallbackPoolExecutor(num_threads=1, context=context)
    finally:
        rclpy.shutdown(context=context)


def test_every_ready_callback_is_queued_once(ros):
    node, executor, thread, errors = ros
    counts = count_submissions(executor)
    ran = collections.Counter()

    def hold_the_gil():     # pure Python work: the workers compete for the GIL
        end = time.perf_counter() + 0.004
        while time.perf_counter() < end:
            pass

    def on_timer():
        ran['timer'] += 1
        hold_the_gil()

    def on_message(msg):
        ran['message'] += 1
        hold_the_gil()

    group = ReentrantCallbackGroup()
    node.create_timer(0.01, on_timer, callback_group=group)
    node.create_subscription(String, 'chatter', on_message, 100, callback_group=group)
    pub = node.create_publisher(String, 'chatter', 100)
    thread.start()
    wait_until(lambda: pub.get_subscription_count() > 0)
    for _ in range(200):
        pub.publish(String(data='x'))
        time.sleep(0.005)
    wait_until(lambda: ran['message'] >= 150 and ran['timer'] >= 50)
    assert not errors
    assert counts and max(counts.values()) == 1, 'a task was handed to the pool twice'
    assert executor.dispatched >= ran['message'] + ran['timer'] - 2


def test_mutually_exclusive_group_runs_one_at_a_time(ros):
    node, executor, thread, errors = ros
    active, overlaps, calls = [0], [0], [0]
    lock = threading.Lock()

    def slow():
        with lock:
            active[0] += 1
            overlaps[0] = max(overlaps[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
            calls[0] += 1

    group = MutuallyExclusiveCallbackGroup()
    for _ in range(3):
        node.create_timer(0.005, slow, callback_group=group)
    thread.start()
    wait_until(lambda: calls[0] >= 30)
    assert overlaps[0] == 1
    assert not errors


def test_reentrant_group_runs_callbacks_in_parallel(ros):
    node, executor, thread, errors = ros
    inside = threading.Barrier(2, timeout=10.0)
    met = []

    def meet():
        try:
            inside.wait()
            met.append(True)
        except threading.BrokenBarrierError:
            pass

    group = ReentrantCallbackGroup()
    timers = [node.create_timer(0.05, meet, callback_group=group) for _ in range(2)]
    thread.start()
    wait_until(lambda: len(met) >= 2)   # two callbacks were inside at the same time
    for timer in timers:
        timer.cancel()
    assert not errors


def test_callback_exception_comes_out_of_spin(ros):
    node, executor, thread, errors = ros

    def broken():
        raise RuntimeError('callback failed on purpose')

    node.create_timer(0.01, broken)
    thread.start()
    wait_until(lambda: errors)
    assert isinstance(errors[0], RuntimeError)
    assert 'on purpose' in str(errors[0])


def test_spin_until_future_complete_answers_a_service(ros):
    node, executor, thread, errors = ros
    group = ReentrantCallbackGroup()

    def answer(request, response):
        response.success, response.message = True, 'pong'
        return response

    node.create_service(Trigger, 'ping', answer, callback_group=group)
    client = node.create_client(Trigger, 'ping', callback_group=group)
    assert client.wait_for_service(timeout_sec=20.0)
    future = client.call_async(Trigger.Request())
    executor.spin_until_future_complete(future, timeout_sec=20.0)
    assert future.done()
    assert future.result().message == 'pong'
    assert not errors
