"""Figure 1: learn latency of one teaching episode, ours vs Avalanche AR1 vs native rehearsal.

One episode = 300 real frames (COIL-100 clutter, 128x128), a replay memory already holding
1,500 patterns, 4 epochs, minibatch 128. All three run in this one process, interleaved
round by round (ours, AR1, native, ours, ...), so they share the load of the moment and the
process-wide glibc malloc setting (the core's ``tune_malloc`` is applied before anything
is built). Ratios are taken per round, then their median is reported.

* ours: ``ContinualLearner(LearnerConfig(threads=T))`` (default AR1*-free, EfficientNet-Lite0
  at the default cut, uint8 latents, ONNX Runtime lower part); time = ``observe`` (encode
  the 300 frames) + ``learn``.
* Avalanche AR1 (0.6.0, MobileNetV1 at conv5_4/dw = latent layer 19, float32 latents;
  randomly initialised because its constructor downloads weights): time = ``train`` on
  one 300-image experience, after its memory was set to 1,500 latents of real frames.
* native rehearsal (benchmarks/peers/native_rehearsal.py): the same backbone trained end
  to end on 300 new + 1,500 replayed raw images.

Setup steps (filling the memories) run with 1 epoch and are not timed. Run with the bench
venv (Avalanche): ``$BENCH_PYTHON benchmarks/learn_latency.py``.
"""

import argparse
import functools
import time

import numpy as np
import torch

from common import Recorder, load_frames, parse_common, set_threads, summary, tune_malloc_now


def episodes(frames, labels, size):
    """Split arrays into consecutive episodes of ``size`` frames."""
    return [(frames[i:i + size], labels[i:i + size]) for i in range(0, len(frames), size)]


def observe_grouped(learner, frames, labels):
    """Observe frames grouped by label (one teaching call per object)."""
    for label in np.unique(labels):
        learner.observe(frames[labels == label], f'obj{int(label)}')


def fill_memory(learner, frames, labels, epochs=4):
    """Teach the first 1,500 frames in two 1-epoch steps (memory full), then use ``epochs``."""
    learner.config.epochs = 1
    observe_grouped(learner, frames[:1000], labels[:1000])
    learner.learn()
    observe_grouped(learner, frames[1000:1500], labels[1000:1500])
    learner.learn()
    learner.config.epochs = epochs


class Ours:
    """Our default learner with its memory pre-filled to 1,500 real latents."""

    name = 'ours (latent replay, default)'

    def __init__(self, threads, setup_frames, setup_labels, episode, replay=1500, epochs=4,
                 cut=None):
        from ros2_latent_replay.core import ContinualLearner, LearnerConfig
        extra = {'latent_layer': cut} if cut else {}
        self.learner = ContinualLearner(LearnerConfig(threads=threads, replay_size=replay,
                                                      **extra))
        if cut:
            self.name = f'ours at {cut} (default otherwise)'
        self.learner.config.epochs = 1
        cap = self.learner.replay_capacity
        half = min(1000, cap * 2 // 3)
        observe_grouped(self.learner, setup_frames[:half], setup_labels[:half])
        self.learner.learn()
        observe_grouped(self.learner, setup_frames[half:cap], setup_labels[half:cap])
        self.learner.learn()
        self.learner.config.epochs = epochs
        assert self.learner.replay_fill == cap, self.learner.replay_fill
        self.episode = episode

    def run(self, frames, labels):
        """Time one episode; return its measurements."""
        t0 = time.perf_counter()
        observe_grouped(self.learner, frames, labels)
        t1 = time.perf_counter()
        stats = self.learner.learn()
        t2 = time.perf_counter()
        return {'seconds': t2 - t0, 'encode_seconds': t1 - t0, 'learn_seconds': t2 - t1,
                'iterations_per_epoch': stats['iterations'],
                'new_per_minibatch': stats['new_per_minibatch'],
                'replay_per_minibatch': stats['replay_per_minibatch'],
                'replay_fill': stats['replay_fill'], 'lower_backend':
                self.learner.lower_backend, 'upper_precision': self.learner.upper_precision,
                'latent_layer': self.learner.stats()['latent_layer']}


class AvalancheAR1:
    """Avalanche 0.6.0 AR1 with its memory set to 1,500 latents of real frames."""

    name = 'Avalanche AR1 (latent replay, conv5_4/dw, float32)'

    def __init__(self, threads, setup_frames, setup_labels, episode, replay=1500, epochs=4):
        from peers.avalanche_peers import benchmark, make_ar1
        self.benchmark = benchmark
        self.strategy = make_ar1(rm_sz=replay, train_epochs=1)
        x0, y0 = self._tensors(setup_frames[:128], setup_labels[:128])
        self.strategy.train(self._experiences([(x0, y0)])[0])
        model = self.strategy.model
        model.eval()
        x, y = self._tensors(setup_frames[:replay], setup_labels[:replay])
        with torch.no_grad():
            acts = torch.cat([model.lat_features(x[i:i + 128]) for i in range(0, len(x), 128)])
        self.strategy.rm = (acts.clone(), y.clone())
        self.strategy.train_epochs = epochs
        self.latent_shape = tuple(acts.shape[1:])
        self.rm_bytes = acts.element_size() * acts.nelement()

    @staticmethod
    def _tensors(frames, labels):
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(), torch.as_tensor(labels).long()

    def _experiences(self, pairs):
        bench = self.benchmark(pairs, [pairs[0]])
        return list(bench.train_stream)

    def run(self, frames, labels):
        """Time one episode; return its measurements."""
        x, y = self._tensors(frames, labels)
        # a one-experience stream would restart the clock; add a dummy first experience
        exps = self._experiences([(x[:1], y[:1]), (x, y)])
        t0 = time.perf_counter()
        self.strategy.train(exps[1])
        t1 = time.perf_counter()
        return {'seconds': t1 - t0, 'replay_mb_size': self.strategy.replay_mb_size,
                'latent_shape': list(self.latent_shape), 'rm_bytes': self.rm_bytes,
                'rm_fill': int(self.strategy.rm[0].shape[0])}


class Native:
    """Native rehearsal with our code path, memory pre-filled with 1,500 real images."""

    name = 'native rehearsal (our code, full network, raw images)'

    def __init__(self, threads, setup_frames, setup_labels, episode, replay=1500, epochs=4):
        from ros2_latent_replay.core import LearnerConfig
        from peers.native_rehearsal import NativeRehearsal
        self.nr = NativeRehearsal(LearnerConfig(threads=threads, replay_size=replay))
        self.nr.config.epochs = 1
        first = min(300, replay)
        self.nr.learn(setup_frames[:first], setup_labels[:first])
        cap = self.nr.config.replay_size
        extra = setup_frames[first:cap]
        if len(extra):
            self.nr.memory[first:cap] = self.nr._to_uint8(extra).numpy()
            self.nr.memory_labels[first:cap] = setup_labels[first:cap]
        self.nr.fill = cap
        self.nr.config.epochs = epochs

    def run(self, frames, labels):
        """Time one episode; return its measurements."""
        t0 = time.perf_counter()
        stats = self.nr.learn(frames, labels)
        t1 = time.perf_counter()
        return {'seconds': t1 - t0, 'iterations_per_epoch': stats['iterations'],
                'replay_fill': stats['replay_fill']}


def main():
    """Set the three methods up, then time them round by round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--rounds', type=int, default=None)
    parser.add_argument('--episode', type=int, default=300)
    parser.add_argument('--replay', type=int, default=None)
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--skip', default='', help='comma list: ours,ar1,native')
    parser.add_argument('--alt-cut', default='',
                        help='also time ours at this latent layer (method ours_alt)')
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    if args.quick:   # smoke check: a smaller episode and memory, 1 epoch
        args.episode = min(args.episode, 100)
    replay = args.replay or (300 if args.quick else 1500)
    epochs = args.epochs or (1 if args.quick else 4)
    tune_malloc_now()
    set_threads(args.threads)
    rec = Recorder('learn_latency', {'threads': args.threads, 'rounds': rounds,
                                     'episode_frames': args.episode, 'replay_patterns': replay,
                                     'epochs': epochs, 'input_size': 128, 'minibatch': 128,
                                     'scenario': 'coil100_clutter NIC run0 training frames'})
    frames, labels = load_frames('clutter', 0, count=replay + rounds * args.episode)
    setup_f, setup_l = frames[:replay], labels[:replay]
    eps = episodes(frames[replay:], labels[replay:], args.episode)
    skip = set(filter(None, args.skip.split(',')))
    methods = {}
    build = {}
    todo = [('ours', Ours), ('ar1', AvalancheAR1), ('native', Native)]
    if args.alt_cut:
        todo.insert(1, ('ours_alt', functools.partial(Ours, cut=args.alt_cut)))
    for key, cls in todo:
        if key in skip:
            continue
        t0 = time.perf_counter()
        methods[key] = cls(args.threads, setup_f, setup_l, args.episode, replay, epochs)
        build[key] = time.perf_counter() - t0
        print(f'{key}: set up in {build[key]:.1f} s', flush=True)
    runs = {key: [] for key in methods}
    for r, (f, lab) in enumerate(eps):
        for key, method in methods.items():
            out = method.run(f, lab)
            out['load_average'] = list(__import__('os').getloadavg())
            runs[key].append(out)
            print(f'round {r} {key}: {out["seconds"]:.2f} s', flush=True)
        partial = {key: [o['seconds'] for o in v] for key, v in runs.items()}
        rec.write(args.out or 'learn_latency.json', partial=True, seconds=partial, runs=runs)
    ratios = {}
    for peer in ('ar1', 'native', 'ours_alt'):
        if 'ours' in runs and peer in runs:
            per_round = [p['seconds'] / o['seconds'] for o, p in zip(runs['ours'], runs[peer])]
            ratios[f'{peer}_over_ours'] = {'per_round': per_round,
                                           'median': float(np.median(per_round))}
    floors = {'ar1_over_ours >= 4': ratios.get('ar1_over_ours', {}).get('median', 0) >= 4,
              'native_over_ours >= 6': ratios.get('native_over_ours', {}).get('median', 0) >= 6}
    if 'ours_alt' in runs and 'ar1' in runs:
        per_round = [p['seconds'] / o['seconds'] for o, p in zip(runs['ours_alt'], runs['ar1'])]
        ratios['ar1_over_ours_alt'] = {'per_round': per_round,
                                       'median': float(np.median(per_round))}
    result = rec.write(args.out or 'learn_latency.json', partial=False,
                       names={k: m.name for k, m in methods.items()},
                       setup_seconds=build, runs=runs,
                       seconds={k: summary([o['seconds'] for o in v]) for k, v in runs.items()},
                       ratios=ratios, floors_met=floors)
    print(ratios, floors)
    return result


if __name__ == '__main__':
    main()
