"""Crash recovery: SIGKILL the node at random moments of learning and saving, 20 times.

Each round starts a node process on the same state file, checks what it recovered, teaches
it an episode (every other round first completes a learning step), then starts ``~/learn``
or ``~/save`` and kills the process with SIGKILL: at a random moment of the learning step,
or the moment the save's temporary file appears. Half the kills hit the node alone (its
resource tracker survives and unlinks the replay memory), half its whole process group
(nothing survives; the next node removes the orphaned segment). After every restart:

- the state is the last completed learning step: the one whose ``~/learn`` answered, or
  the one after it when the kill fell between the file's rename and the answer;
- every class taught before is still known, and the check-set probabilities computed from
  the recovered file are bit-identical to those recorded when that step completed;
- the node predicts what the file predicts;
- no temporary file of a save and no replay segment of any killed node is left.

Nodes are forked from a preloaded launcher (``hardening_support.NodeLauncher``) so a
restart takes 1-2 s; ``HARDENING_KILLS`` sets the number of rounds (default 20). The test
sends each node its frames through a participant of that node's own
(``hardening_support.Camera``): a killed reader keeps shared-memory buffers of its writers.
"""

import os
import random
import signal
import time

import pytest
import torch

from hardening_support import (HARDENED, ClientNode, NodeLauncher, RemoteNode, dead_segments,
                               learner_values, temp_files)
from node_harness import views
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.learner import ContinualLearner
from ros2_latent_replay.core.replay_buffer import cleanup_stale_segments

KILLS = int(os.environ.get('HARDENING_KILLS', '20'))
#: slow enough that a kill lands inside learning (~0.5 s) and saving (a few MB, fsync)
PARAMS = dict(HARDENED, epochs=6, replay_size=600, diagnostics_period=0.1,
              prediction_rate=0.0, observe_batch_size=4)
FRAMES_PER_EPISODE = 6


def _teach(remote, name, frames):
    """Label, paced frames, stop: wait until the node collected them all.

    The camera topic is best effort, and a reader drops what arrives before it has
    discovered the writer, so frames that got lost are sent again.
    """
    from std_msgs.msg import String
    client = remote.client
    target = int(remote.status['frames_collected']) + len(frames)
    remote.label_pub.publish(String(data=name))
    client.wait(lambda: remote.status.get('label') == name, 30.0, f'label {name!r}')
    deadline = time.monotonic() + 60.0
    while int(remote.status['frames_collected']) < target:
        assert time.monotonic() < deadline, 'the frames were not collected'
        missing = target - int(remote.status['frames_collected'])
        for frame in frames[-missing:]:
            remote.publish(frame)
            client.spin(0.02)
        client.spin(0.3)
    remote.label_pub.publish(String(data=''))
    client.wait(lambda: remote.status.get('label') == '', 30.0, 'the label to clear')


def _node_prediction(remote, frame, seconds=30.0):
    """~/predict about exactly ``frame`` (sent again until the node has it)."""
    deadline = time.monotonic() + seconds
    while True:
        stamp = remote.publish(frame)
        remote.client.spin(0.05)
        ok, body = remote.call('predict', 30.0)
        if ok and abs(body['stamp'] - stamp) < 1e-12:
            return body
        assert ok or body['error'] == 'no_frame', body
        assert time.monotonic() < deadline, f'no copy of the check frame reached the node ' \
                                            f'in {seconds:.0f} s'


def _kill(pid, group):
    if group:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(900)
def test_sigkill_during_learning_and_saving_loses_nothing(work_dir):
    """20 kill/restart rounds: the last completed step survives intact, nothing is left over."""
    objects = views(4, 6 * 2, 2)
    names = list(objects)
    check = [frame for name in names for frame in objects[name][1]]
    check_labels = [name for name in names for _ in objects[name][1]]
    state = work_dir / 'state.pt'
    rng = random.Random(20240611)
    launcher = NodeLauncher(work_dir / 'logs')
    client = ClientNode()
    # the checker reads the file with eager PyTorch throughout, so its check-set probabilities
    # depend on the file's contents only; the predictor reads it as the node does (upper part
    # in ONNX Runtime, 1 thread), so it answers what the node should answer
    checker = ContinualLearner(LearnerConfig.from_dict(learner_values(PARAMS),
                                                       upper_runtime='torch'))
    predictor = ContinualLearner(LearnerConfig.from_dict(learner_values(PARAMS)))
    records = {0: None}        # steps -> check-set probabilities recorded when it completed
    accuracy = {}              # steps -> check-set accuracy then
    acked = {'steps': 0, 'classes': []}
    dead, tally, learn_seconds = [], {}, [0.5]
    remote = None

    def file_state():
        """Return steps, classes and check-set probabilities of the state file."""
        if not state.exists():
            return 0, [], None
        checker.load(str(state))
        if checker.steps == 0:
            return 0, [], None
        return checker.steps, checker.known_classes, checker.probabilities(
            checker.encode(check))

    def record(steps, classes, probs):
        hits = [classes[int(i)] == label for i, label in zip(probs.argmax(1), check_labels)]
        records[steps] = probs
        accuracy[steps] = sum(hits) / len(hits)

    try:
        for round_index in range(KILLS + 1):
            remote = RemoteNode(client, launcher, f'k{round_index}', state,
                                f'node{round_index}.log', **PARAMS)
            remote.wait_ready()
            # ---- what the restarted node recovered
            assert temp_files(state) == [], 'a save left its temporary file behind'
            assert dead_segments(dead) == [], 'a killed node left its replay memory behind'
            steps, classes, probs = file_state()
            if steps == acked['steps']:
                assert classes == acked['classes']
                if probs is not None:
                    assert torch.equal(probs, records[steps]), 'the check set changed'
            else:   # killed after the rename of an autosave, before its answer
                assert steps == acked['steps'] + 1 and acked.get('learn_in_flight'), \
                    (steps, acked)
                assert set(acked['classes']) <= set(classes)
                record(steps, classes, probs)
                tally['step after the answer'] = tally.get('step after the answer', 0) + 1
            acked.update(steps=steps, classes=classes, learn_in_flight=False)
            assert int(remote.status['steps']) == steps
            assert remote.status['known_classes'] == ', '.join(classes)
            if steps:
                predictor.load(str(state))
                expected = predictor.predict([check[round_index % len(check)]])[0]
                answer = _node_prediction(remote, check[round_index % len(check)])
                assert answer['label'] == expected['label']
                assert answer['confidence'] == pytest.approx(expected['confidence'], abs=1e-5)
            if round_index == KILLS:
                break

            # ---- every other round (and the first) completes a learning step
            name = names[round_index % len(names)]
            train = objects[name][0]
            episode = [train[(round_index * 3 + k) % len(train)]
                       for k in range(FRAMES_PER_EPISODE)]
            if round_index % 2 == 0 or steps == 0:
                _teach(remote, name, episode)
                ok, body = remote.call('learn')
                assert ok, body
                learn_seconds.append(body['seconds'])
                steps, classes, probs = file_state()
                assert steps == body['step'] + 1 and name in classes
                record(steps, classes, probs)
                acked.update(steps=steps, classes=classes)

            # ---- start a learning step or a save, and kill the node in the middle of it
            mode = rng.choice(('learn', 'autosave', 'save'))
            if mode != 'save':
                other = names[(round_index + 1) % len(names)]
                _teach(remote, other, episode[::-1])
            future = remote.call_async('learn' if mode != 'save' else 'save')
            acked['learn_in_flight'] = mode != 'save'
            if mode == 'learn':
                delay = rng.uniform(0.0, 1.2 * max(learn_seconds[-3:]))
                client.spin(delay)
            else:
                deadline = time.monotonic() + 60.0
                while not temp_files(state) and not future.done():
                    assert time.monotonic() < deadline, 'the save did not begin'
                    client.executor.spin_once(timeout_sec=0.0005)
            in_save = bool(temp_files(state))
            _kill(remote.pid, group=round_index % 2 == 1)
            code = launcher.wait(remote.pid, 30.0)
            assert code == -signal.SIGKILL, code
            dead.append(remote.pid)
            outcome = 'answered first' if future.done() else \
                ('during save' if in_save else f'during {mode}')
            tally[f'{mode}: {outcome}'] = tally.get(f'{mode}: {outcome}', 0) + 1
            if future.done() and future.result().success:
                steps, classes, probs = file_state()
                if probs is not None:
                    record(steps, classes, probs)
                acked.update(steps=steps, classes=classes)
            remote.destroy()
            remote = None

        # ---- the last node shuts down cleanly
        os.kill(remote.pid, signal.SIGINT)
        assert launcher.wait(remote.pid, 60.0) == 0
        dead.append(remote.pid)
        remote.destroy()
        remote = None
        deadline = time.monotonic() + 30.0
        while dead_segments(dead) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dead_segments(dead) == []
        assert temp_files(state) == []
    finally:
        if remote is not None:
            _kill(remote.pid, group=True)
            launcher.wait(remote.pid, 30.0)
        checker.close()
        predictor.close()
        client.close()
        launcher.close()
        cleanup_stale_segments()    # what killed process groups left, if the test failed
    kills_in_save = sum(v for k, v in tally.items() if k.endswith('during save'))
    print(f'{KILLS} kills: {tally}; final steps {acked["steps"]}; check-set accuracy by '
          f'step {accuracy}')
    assert kills_in_save >= 1, f'no kill landed inside a save: {tally}'
