"""Figure 3: predict latency per frame, eager PyTorch vs ONNX Runtime, idle and learning.

Batch 1; the learning step runs in another thread.

Learners with the default configuration, one running both parts in eager PyTorch
(``lower_runtime='torch'``, ``upper_runtime='torch'``), one in ONNX Runtime with the
float32 lower and upper parts (``lower_precision='float32'``,
``upper_precision='float32'``, backend name ``onnxruntime``), one with the int8 lower
part and the float32 upper part (backend name ``int8``, the default before 2026-12-02)
and one with both parts in int8 (the default, backend name ``int8_upper``), are taught
real frames (memory filled to 1,500 latents). For each: ``predict(frame)`` on single
128x128 frames, first idle (the learners taking turns in blocks of 50 calls), then while
``learn()`` runs a 300-frame episode (4 epochs, 1,500 replayed) in a background thread,
as the node does, then idle again. Latencies are per call (preprocessing + lower part +
upper part + softmax); "network alone" times the two ONNX Runtime sessions on
pre-normalised frames, nothing else. ``--backends`` may add ``slowed``: a learner with
``lower_mode='slowed'`` and its other settings at their defaults (its lower part trains in
eager PyTorch and predicts from a float32 ONNX Runtime graph rebuilt after every step; the
upper part in int8 ONNX Runtime), and ``slowed_torch``: the same with
``lower_runtime='torch'`` (eager float32 lower part, as before 2026-12-07), and
``slowed_after_blocks.3.2`` / ``slowed_after_blocks.4.2``: ``slowed`` with
``lower_frozen_until`` set to that layer (the layers up to it frozen, in int8 ONNX Runtime;
the trained layers after it in a float32 graph rebuilt after every step), and the same three
with ``_int8`` appended (``slowed_lower_precision='int8'``: the graph of the trained layers
quantized after every step). Threads: torch and ONNX Runtime intra-op threads set
explicitly (``--threads``).
"""

import argparse
import os
import threading
import time

import numpy as np

from common import Recorder, load_frames, parse_common, set_threads, summary, tune_malloc_now
from learn_latency import fill_memory, observe_grouped

SLOWED = ['slowed', 'slowed_after_blocks.3.2', 'slowed_after_blocks.4.2']
BACKENDS = ['onnxruntime', 'int8', 'torch', 'int8_upper', *SLOWED, 'slowed_torch',
            *(f'{name}_int8' for name in SLOWED)]


def build_learner(backend, threads, frames, labels):
    """Return a default learner taught 1,500 real frames, running ``backend``'s engines."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    if backend.startswith('slowed'):   # lower_mode slowed, int8 upper part
        name, int8 = (backend[:-len('_int8')], True) if backend.endswith('_int8') \
            else (backend, False)
        split = name.split('_after_')[1] if '_after_' in name else ''
        config = LearnerConfig(threads=threads, lower_mode='slowed', lower_frozen_until=split,
                               lower_runtime='torch' if backend == 'slowed_torch' else 'auto',
                               slowed_lower_precision='int8' if int8 else 'float32')
    else:
        int8 = backend in ('int8', 'int8_upper')
        config = LearnerConfig(
            threads=threads,
            lower_runtime='onnxruntime' if int8 else backend,
            lower_precision='int8' if int8 else 'float32',
            upper_runtime='torch' if backend == 'torch' else 'auto',
            upper_precision='int8' if backend == 'int8_upper' else 'float32')
    learner = ContinualLearner(config)
    fill_memory(learner, frames, labels)
    return learner


def default_backend():
    """Return the name of the backend that a learner with the product defaults runs."""
    from ros2_latent_replay.core import LearnerConfig
    config = LearnerConfig()
    if config.effective_lower_precision() != 'int8':
        return 'onnxruntime'
    return 'int8_upper' if config.effective_upper_precision() == 'int8' else 'int8'


def alternate(learners, measure, count, block=50):
    """Run ``measure(learner, n, start)`` for every learner in turns of ``block`` calls.

    Each learner is warmed up with 10 calls first; every learner sees the same frames in
    the same order. Returns {name: latencies} (None where ``measure`` gives None).
    """
    out = {}
    for name, learner in learners.items():
        out[name] = [] if measure(learner, 10, 0) is not None else None
    for start in range(0, count, block):
        for name, learner in learners.items():
            if out[name] is not None:
                out[name] += measure(learner, min(block, count - start), start)
    return out


def measure_idle(learner, frames, count, warmup=10, start=0):
    """Latency of ``count`` single-frame predictions from frame ``start`` on (after warm-up)."""
    for f in frames[:warmup]:
        learner.predict(f[None])
    out = []
    for i in range(count):
        f = frames[(start + i) % len(frames)]
        t0 = time.perf_counter()
        learner.predict(f[None])
        out.append(time.perf_counter() - t0)
    return out


def measure_parts(learner, frames, count):
    """Return per-call latency of a prediction's parts.

    The parts: encode (preprocess + lower part), then upper part + softmax + top-k on the
    latent (``predict_latents``).
    """
    encode, upper = [], []
    for i in range(count):
        f = frames[i % len(frames)][None]
        t0 = time.perf_counter()
        lat = learner.encode(f)
        t1 = time.perf_counter()
        learner.predict_latents(lat)
        t2 = time.perf_counter()
        encode.append(t1 - t0)
        upper.append(t2 - t1)
    return {'encode_ms': ms(encode), 'upper_softmax_topk_ms': ms(upper)}


def measure_network_alone(learner, frames, count, warmup=10, start=0):
    """Latency of the ONNX Runtime sessions alone, for the same frames as ``measure_idle``.

    Frames are normalised beforehand; each call runs the lower part's session (two with
    ``lower_frozen_until``: the frozen layers', then the trained layers') and the
    upper part's session back to back on one frame, nothing else. This is the floor a
    ``predict()`` call cannot go under on this machine at this moment, so the difference
    says what the rest of the call (checks, preprocessing, softmax, top-k) costs, and the
    figure itself says how fast the host is today. ``None`` when a part is not in ONNX
    Runtime.
    """
    lower = learner._runtime or learner._lower_serving   # a benchmark may peek
    upper = learner._upper_runtime
    frozen = learner._frozen_runtime     # the frozen layers below lower_frozen_until
    if lower is None or lower.backend != 'onnxruntime' or upper is None \
            or (frozen is not None and frozen.backend != 'onnxruntime'):
        return None
    from ros2_latent_replay.core.preprocessing import frames_to_tensor
    backbone = learner._backbone
    size = learner.config.input_size
    inputs = [frames_to_tensor(f[None], size, backbone.mean, backbone.std).numpy()
              for f in frames]
    sessions = [part._session for part in (frozen, lower, upper) if part is not None]
    names = [(ses.get_inputs()[0].name, ses.get_outputs()[0].name) for ses in sessions]
    out = []
    for i in range(count + warmup):
        t0 = time.perf_counter()
        value = inputs[(start + i) % len(inputs)]
        for session, (name_in, name_out) in zip(sessions, names):
            value = session.run([name_out], {name_in: value})[0]
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def measure_during_learn(learner, frames, ep_frames, ep_labels):
    """Predict single frames continuously while ``learn()`` runs in a thread."""
    observe_grouped(learner, ep_frames, ep_labels)
    done = threading.Event()
    info = {}

    def work():
        t0 = time.perf_counter()
        info['stats'] = learner.learn()
        info['seconds'] = time.perf_counter() - t0
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    out = []
    i = 0
    while not done.is_set():
        f = frames[i % len(frames)]
        i += 1
        t0 = time.perf_counter()
        learner.predict(f[None])
        dt = time.perf_counter() - t0
        if not done.is_set():   # only calls that overlapped the learning step
            out.append(dt)
    thread.join()
    return out, info.get('seconds')


def ms(values):
    """Summary in milliseconds."""
    s = summary([v * 1000.0 for v in values])
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


def main():
    """Measure both lower-part runtimes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--calls', type=int, default=None)
    parser.add_argument('--learn-rounds', type=int, default=None)
    parser.add_argument('--backends', default='onnxruntime,int8,int8_upper,torch',
                        help='comma-separated: onnxruntime (float32), int8 (int8 lower part, '
                             'float32 upper part), int8_upper (int8 lower and upper parts: '
                             'the default), torch, slowed (lower_mode slowed, its other '
                             'settings at their defaults), slowed_torch (the same with '
                             'lower_runtime torch), slowed_after_blocks.3.2 and '
                             'slowed_after_blocks.4.2 (slowed with lower_frozen_until); '
                             'the three slowed ones + _int8 (slowed_lower_precision int8)')
    args = parser.parse_args()
    calls = args.calls or (200 if args.quick else 1000)
    learn_rounds = args.learn_rounds if args.learn_rounds is not None else (
        1 if args.quick else 2)
    tune_malloc_now()
    set_threads(args.threads)
    rec = Recorder('predict_latency', {'threads_torch': args.threads,
                                       'threads_onnxruntime': args.threads,
                                       'calls_idle': calls, 'learn_rounds': learn_rounds,
                                       'batch': 1, 'input_size': 128})
    backends = args.backends.split(',')
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f'unknown backends {unknown}; valid: {", ".join(BACKENDS)}')
    # each backend learns its own 300-frame episodes, after the 1,500 frames all are taught
    frames, labels = load_frames('clutter', 0,
                                 count=1500 + 300 * (len(backends) * learn_rounds))
    test, _ = load_frames('clutter', 0, count=200, test=True)
    learners = {backend: build_learner(backend, args.threads, frames, labels)
                for backend in backends}
    # idle figures: the backends take turns in blocks of 50 calls, so a host that speeds up
    # or slows down during the run (it does, here) weighs on all of them alike
    idle = alternate(learners, lambda lrn, n, i: measure_idle(lrn, test, n, 0, i), calls)
    alone = alternate(learners, lambda lrn, n, i: measure_network_alone(lrn, test, n, 0, i),
                      calls)
    results = {}
    for backend, learner in learners.items():
        parts = measure_parts(learner, test, calls)
        busy, learn_s = [], []
        base = 1500 + 300 * learn_rounds * backends.index(backend)
        for r in range(learn_rounds):
            s, e = base + 300 * r, base + 300 * (r + 1)
            lat, sec = measure_during_learn(learner, test, frames[s:e], labels[s:e])
            busy += lat
            learn_s.append(sec)
        results[backend] = {
            'backend_used': learner.lower_backend,
            'lower_precision': learner.lower_precision,
            'slowed_lower_precision': learner.slowed_lower_precision,
            'upper_precision': learner.upper_precision,
            'upper_backend_used': learner.upper_backend, 'idle_ms': ms(idle[backend]),
            'idle_parts': parts,
            'network_alone_ms': ms(alone[backend]) if alone[backend] else None,
            'during_learn_ms': ms(busy),
            'learn_seconds_with_predictions': learn_s,
            'slowdown_p50': (float(np.median(busy)) / float(np.median(idle[backend])))
            if busy else None,
            'load_average': list(os.getloadavg())}
        print(backend, results[backend], flush=True)
        rec.write(args.out or 'predict_latency.json', partial=True, results=results)
    idle_after = alternate(learners, lambda lrn, n, i: measure_idle(lrn, test, n, 0, i),
                           calls // 2)
    for backend, learner in learners.items():
        results[backend]['idle_after_ms'] = ms(idle_after[backend])
        learner.close()
    ratios = {}
    default = results.get('int8_upper')
    for backend in results:   # every slowed variant against the default, same run
        if backend.startswith('slowed') and default is not None:
            key = backend.replace('.', '_')
            ratios[f'{key}_over_default_idle_p50'] = \
                results[backend]['idle_ms']['p50'] / default['idle_ms']['p50']
            ratios[f'{key}_over_default_learn_seconds'] = \
                float(np.mean(results[backend]['learn_seconds_with_predictions'])) \
                / float(np.mean(default['learn_seconds_with_predictions']))
    if 'slowed' in results and 'slowed_torch' in results:
        ratios['slowed_eager_over_ort_idle_p50'] = \
            results['slowed_torch']['idle_ms']['p50'] / results['slowed']['idle_ms']['p50']
    if 'onnxruntime' not in results or 'torch' not in results:
        rec.write(args.out or 'predict_latency.json', partial=False, results=results,
                  **ratios)
        return
    ort = results['onnxruntime']
    floors = {'ort idle p50 <= 2 ms': ort['idle_ms']['p50'] <= 2.0,
              'ort during-learn p50 <= 3x idle p50': (ort['slowdown_p50'] or 99) <= 3.0}
    ratios['eager_over_ort_idle_p50'] = results['torch']['idle_ms']['p50'] \
        / ort['idle_ms']['p50']
    if 'int8' in results:
        int8 = results['int8']
        floors['int8 lower part idle p50 <= 2 ms'] = int8['idle_ms']['p50'] <= 2.0
        floors['int8 lower part during-learn p50 <= 3x idle p50'] = \
            (int8['slowdown_p50'] or 99) <= 3.0
        ratios['ort_over_int8_idle_p50'] = ort['idle_ms']['p50'] / int8['idle_ms']['p50']
        ratios['eager_over_int8_idle_p50'] = results['torch']['idle_ms']['p50'] \
            / int8['idle_ms']['p50']
    if 'int8_upper' in results:
        both = results['int8_upper']
        floors['int8 lower + int8 upper (default) idle p50 <= 2 ms'] = \
            both['idle_ms']['p50'] <= 2.0
        floors['int8 lower + int8 upper (default) during-learn p50 <= 3x idle p50'] = \
            (both['slowdown_p50'] or 99) <= 3.0
        if 'int8' in results:
            ratios['int8_over_int8_upper_idle_p50'] = results['int8']['idle_ms']['p50'] \
                / both['idle_ms']['p50']
    rec.write(args.out or 'predict_latency.json', partial=False, results=results,
              floors_met=floors, default_backend=default_backend(), **ratios)
    print(floors)


if __name__ == '__main__':
    main()
