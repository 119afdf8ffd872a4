"""The executor the node spins on: callbacks on a thread pool, each ready callback queued once.

rclpy's own ``MultiThreadedExecutor`` (9.1.2 on PyPI, and the distros' releases before the fix
in ros2/rclpy#1547) hands a ready callback to its thread pool and returns at once; until a
worker thread has started that callback, every pass of ``wait_for_ready_callbacks`` yields it
again and the spin thread queues it again, without waiting. The spin thread then holds the GIL
in that loop, the workers are slow to start, and the loop feeds itself: measured in the node
(``benchmarks/node_throughput.py``, py-spy), the spin thread ran at 100% of a core for seconds
at a time while a 30 fps camera streamed, and 25-75% of the frames were lost in transport.

:class:`CallbackPoolExecutor` is a custom executor written against the documented extension
point (``Executor.spin_once`` on top of ``wait_for_ready_callbacks``): a callback that is
already queued for a worker is not queued again, and the spin thread gives the GIL away right
after queueing, so the worker starts at once. Exceptions raised by callbacks come back out of
``spin_once`` in the spinning thread, as with rclpy's executors.
"""

import collections
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Deque, Optional, Set

from rclpy.context import Context
from rclpy.executors import (ConditionReachedException, Executor, ExternalShutdownException,
                             ShutdownException, TimeoutException)

_NOT_READY = (ConditionReachedException, ExternalShutdownException, ShutdownException,
              TimeoutException)


def _yield_gil() -> None:
    """Let another thread take the GIL (and the core) now."""
    if hasattr(os, 'sched_yield'):
        os.sched_yield()
    else:  # pragma: no cover - every platform the node runs on has sched_yield
        time.sleep(0)


class CallbackPoolExecutor(Executor):
    """Run callbacks on ``num_threads`` worker threads; never queue a callback twice.

    Callback groups keep their meaning: a mutually exclusive group runs one callback at a
    time, a reentrant group runs as many as there are free workers.
    """

    def __init__(self, num_threads: int = 4, *, context: Optional[Context] = None) -> None:
        """Start ``num_threads`` workers (at least 2) for the nodes added later."""
        super().__init__(context=context)
        if int(num_threads) < 2:
            super().shutdown(timeout_sec=0)
            raise ValueError(f'num_threads must be at least 2, got {num_threads}')
        self._pool = ThreadPoolExecutor(max_workers=int(num_threads),
                                        thread_name_prefix='latent_replay_callback')
        self._lock = threading.Lock()
        self._queued: Set[Any] = set()          # handed to the pool, not started yet
        self._errors: Deque[BaseException] = collections.deque()
        self.dispatched = 0                     # callbacks handed to the pool

    def _run(self, task: Any) -> None:
        with self._lock:
            self._queued.discard(task)
        task()
        error = task.exception() if task.done() else None
        if error is not None:
            with self._lock:
                self._errors.append(error)
            self.wake()

    def _raise_callback_error(self) -> None:
        with self._lock:
            error = self._errors.popleft() if self._errors else None
        if error is not None:
            raise error

    def _dispatch_one(self, timeout_sec: Any, condition: Any = None) -> None:
        try:
            if condition is None:
                task, _, _ = self.wait_for_ready_callbacks(timeout_sec=timeout_sec)
            else:
                task, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, condition)
        except _NOT_READY:
            self._raise_callback_error()
            return
        with self._lock:
            queued = task in self._queued
            if not queued:
                self._queued.add(task)
                self.dispatched += 1
        if not queued:
            self._pool.submit(self._run, task)
        _yield_gil()   # the worker should start the callback before the next wait
        self._raise_callback_error()   # of any callback that failed since the last call

    def spin_once(self, timeout_sec: Optional[float] = None) -> None:
        """Wait for one ready callback and hand it to a worker (it runs there)."""
        self._dispatch_one(timeout_sec)

    def spin_once_until_future_complete(self, future: Any,
                                        timeout_sec: Optional[float] = None) -> None:
        """Like :meth:`spin_once`, but return as soon as ``future`` is done."""
        future.add_done_callback(lambda _: self.wake())
        self._dispatch_one(timeout_sec, future.done)

    def _spin_once_until_future_complete(self, future: Any, timeout_sec: Any = None) -> None:
        # the hook Executor.spin_until_future_complete calls in the rclpy releases that have it
        self._dispatch_one(timeout_sec, future.done)

    def shutdown(self, timeout_sec: Optional[float] = None, *,
                 wait_for_threads: bool = True) -> bool:
        """Stop dispatching, wait up to ``timeout_sec`` for running callbacks, stop workers."""
        success = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=wait_for_threads)
        return success
