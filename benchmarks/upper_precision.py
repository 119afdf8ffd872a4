"""Figure 3b: the upper part in int8 vs float32 for predictions, on the same trained models.

``upper_precision`` changes how predictions run, not how the model learns (training and
state files stay float32), so the same state file can be loaded twice and compared. For
each learner state file given (an evaluation's ``progress.pt`` taken part-way through a
stream, or a node's ``state.pt``): load it into a learner with ``upper_precision``
float32 and one with int8 (calibrated on its replay memory, as after a restart), classify
the scenario's whole test set with both, and time ``predict()`` on single test frames,
the two learners measured in alternating blocks in the same run. Without ``--state`` it
makes its own: the default learner is taught the scenario run's first batches (one
learning step per batch, as the evaluation does) and its state is saved after each count
in ``--train`` (under ``results/tmp``).

    $BENCH_PYTHON upper_precision.py --scenario clutter --run 1 --state a.pt --state b.pt
    $BENCH_PYTHON upper_precision.py --scenario clutter --run 0 --train 20,60

``--part slowed_lower`` compares ``slowed_lower_precision`` instead, on state files of a
learner with ``lower_mode: slowed`` (its trained lower layers predict from a float32 or an
int8 graph; training and the state file are the same): each learner encodes the test
frames with its own graph, so there the accuracy covers the whole prediction.
"""

import argparse
import os
import time

import numpy as np

from common import RESULTS, SCENARIOS, Recorder, parse_common, set_threads, tune_malloc_now
from predict_latency import ms


#: ``--part``: the learner setting compared.
PARTS = {'upper': 'upper_precision', 'slowed_lower': 'slowed_lower_precision'}


def load_learner(path, precision, threads, setting='upper_precision'):
    """Return a learner loaded from ``path``, with ``setting`` = ``precision`` and ``threads``."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    from ros2_latent_replay.core import checkpoint
    state = checkpoint.load_verified(path)
    values = dict(state['config'], threads=threads, **{setting: precision})
    learner = ContinualLearner(LearnerConfig.from_dict(values))
    learner.load_state_dict(state, source=path)
    return learner


def classify(learner, latents):
    """Predicted label of every latent."""
    labels = []
    for start in range(0, len(latents), 256):
        chunk = latents[start:start + 256]
        labels += [r['label'] for r in learner.predict_latents(chunk, top_k=1)]
    return labels


def time_predict(learners, frames, calls, block=50):
    """Per-call ``predict()`` latency of each learner, alternating blocks of ``block`` calls."""
    out = {name: [] for name in learners}
    for name, learner in learners.items():     # warm-up
        for f in frames[:10]:
            learner.predict(f[None])
    for start in range(0, calls, block):
        for name, learner in learners.items():
            for i in range(start, min(start + block, calls)):
                f = frames[i % len(frames)][None]
                t0 = time.perf_counter()
                learner.predict(f)
                out[name].append(time.perf_counter() - t0)
    return out


def train_states(scenario, counts, threads, tag):
    """Teach the default learner the first batches; return state files saved at ``counts``."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    from ros2_latent_replay.core.evaluation import ScenarioSource, label_runs
    source = ScenarioSource(scenario)
    paths = []
    with ContinualLearner(LearnerConfig(threads=threads)) as learner:
        for index in range(max(counts)):
            frames, names = source.load_batch(index)
            for label, begin, end in label_runs(names):
                learner.observe(frames[begin:end], label)
            learner.learn()
            if index + 1 in counts:
                path = RESULTS / 'tmp' / f'upper_precision_{tag}_b{index + 1}.pt'
                path.parent.mkdir(parents=True, exist_ok=True)
                learner.save(str(path))
                paths.append(str(path))
    return paths


def main():
    """Compare both precisions on every state file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--scenario', choices=sorted(SCENARIOS), default='clutter')
    parser.add_argument('--run', type=int, default=0, help='scenario run the states come from')
    parser.add_argument('--state', action='append', default=[],
                        help='learner state file; repeat for several')
    parser.add_argument('--train', default=None,
                        help='without --state: batch counts to train to and compare at '
                             '(default 40,120; --quick: 8)')
    parser.add_argument('--calls', type=int, default=None)
    parser.add_argument('--part', choices=sorted(PARTS), default='upper',
                        help='upper: upper_precision (default); slowed_lower: '
                             'slowed_lower_precision (state files of a slowed learner)')
    args = parser.parse_args()
    setting = PARTS[args.part]
    if args.part != 'upper' and not args.state:
        parser.error('--part slowed_lower needs --state files of a slowed learner')
    calls = args.calls or (200 if args.quick else 1000)
    tune_malloc_now()
    set_threads(args.threads)
    from ros2_latent_replay.core.scenario import read_scenario
    directory, images = SCENARIOS[args.scenario]
    scenario = read_scenario(directory / f'run{args.run}', images)
    states = list(args.state)
    if not states:
        counts = {int(v) for v in (args.train or ('8' if args.quick else '40,120')).split(',')}
        states = train_states(scenario, counts, args.threads, f'{args.scenario}_run{args.run}')
    frames, truth = scenario.load_entries(scenario.test)
    name = 'upper_precision' if args.part == 'upper' else 'slowed_lower_precision'
    rec = Recorder(name, {'scenario': args.scenario, 'run': args.run, 'setting': setting,
                          'threads': args.threads, 'calls': calls,
                          'test_frames': len(truth), 'batch': 1})
    results = []
    for path in states:
        learners = {p: load_learner(path, p, args.threads, setting)
                    for p in ('float32', 'int8')}
        try:
            if args.part == 'upper':     # same latents, two upper parts
                latents = learners['float32'].encode(frames)
                predicted = {p: classify(lrn, latents) for p, lrn in learners.items()}
            else:                        # each learner's own latents
                predicted = {p: classify(lrn, lrn.encode(frames))
                             for p, lrn in learners.items()}
            accuracy = {p: 100.0 * float(np.mean([a == b for a, b in zip(labels, truth)]))
                        for p, labels in predicted.items()}
            pairs = zip(predicted['float32'], predicted['int8'])
            agreement = 100.0 * float(np.mean([a == b for a, b in pairs]))
            times = time_predict(learners, frames, calls)
            entry = {
                'state': os.path.basename(path), 'steps': learners['float32'].steps,
                'classes': len(learners['float32'].known_classes),
                'precision_in_use': {p: getattr(lrn, setting) for p, lrn in learners.items()},
                'int8_min_cosine': (learners['int8']._upper_runtime if args.part == 'upper'
                                    else learners['int8']._lower_serving).min_cosine,
                'accuracy': accuracy, 'agreement': agreement,
                'predict_ms': {p: ms(v) for p, v in times.items()},
                'float32_over_int8_p50': float(np.median(times['float32']))
                / float(np.median(times['int8'])),
                'load_average': list(os.getloadavg())}
        finally:
            for lrn in learners.values():
                lrn.close()
        print(entry, flush=True)
        results.append(entry)
        rec.write(args.out or f'{name}.json', partial=True, results=results)
    rec.write(args.out or f'{name}.json', partial=False, results=results)


if __name__ == '__main__':
    main()
