"""Figure 2: the paper's Table I on our backbones: accuracy, learn time and bytes per cut.

For each backbone and latent layer (early to pool):

* bytes per stored pattern for each storage type (uint8 includes its per-channel scale and
  offset), and for 1,500 patterns;
* learn time of one 300-frame episode (4 epochs, replay memory full at 1,500 patterns,
  default AR1*-free), median over ``--learn-rounds`` (the memory is filled with real
  latents first, untimed);
* final (and mean) accuracy of the default learner on the first ``--batches`` batches of
  a scenario run (default: COIL-100 clutter run0), latents precomputed per cut.

``mobilenet_v2`` has no ImageNet weights on this machine (torchvision's file is absent and
nothing is downloaded): its rows are built with ``random_init=True`` and give bytes and
learn time only (time does not depend on the weights); its accuracy is not measured.
"""

import argparse
import os
import time

import numpy as np

from common import Recorder, load_frames, parse_common, set_threads, tune_malloc_now

LITE0_CUTS = ['blocks.2.1', 'blocks.3.2', 'blocks.4.2', 'blocks.5.1', 'blocks.5.3',
              'blocks.6.0', 'conv_head', 'pool']
V2_CUTS = ['features.4', 'features.7', 'features.11', 'features.14', 'features.15',
           'features.17', 'features.18', 'pool']


def has_v2_weights():
    """Return True when torchvision's MobileNetV2 ImageNet file is present locally."""
    from ros2_latent_replay.core.backbones import _torchvision_weights_file
    return os.path.isfile(_torchvision_weights_file('mobilenet_v2'))


def bytes_rows(backbone, cut, random_init):
    """Latent shape and bytes per pattern per storage."""
    from ros2_latent_replay.core.backbones import build_backbone
    from ros2_latent_replay.core.latent_codec import bytes_per_pattern
    bb = build_backbone(backbone, cut=cut, random_init=random_init)
    shape = tuple(bb.latent_shape)
    return shape, {s: bytes_per_pattern(s, shape) for s in ('uint8', 'float16', 'float32')}


def learn_time(backbone, cut, random_init, threads, frames, labels, rounds):
    """Median seconds of one 300-frame learn with a full 1,500-pattern memory."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    from learn_latency import fill_memory, observe_grouped
    learner = ContinualLearner(LearnerConfig(backbone=backbone, latent_layer=cut,
                                             random_init=random_init, threads=threads))
    fill_memory(learner, frames, labels)
    times = []
    for r in range(rounds):
        s = 1500 + 300 * r
        observe_grouped(learner, frames[s:s + 300], labels[s:s + 300])
        t0 = time.perf_counter()
        learner.learn()
        times.append(time.perf_counter() - t0)
    learner.close()
    return times


def accuracy(backbone, cut, threads, scenario, batches, checkpoints):
    """Return final and mean accuracy of the default learner on the first ``batches`` batches."""
    from accuracy import checkpoints_of, encode_all, run_ours, scenario_of, split
    scen = scenario_of(scenario, 0, batches)
    data = encode_all(scen, backbone, cut, threads, f'{scenario}_run0_b{len(scen.batches)}')
    idx, test = split(data, scen)
    points = checkpoints_of(len(idx), checkpoints)
    accs, seconds = run_ours('ar1_free', data, idx, test, points, threads, 0,
                             backbone=backbone, cut=cut)
    return {'final': accs[-1], 'mean': float(np.mean(accs)), 'curve': accs,
            'seconds_whole_stream': seconds, 'batches': len(idx)}


def main():
    """Build the table row by row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--backbones', default='efficientnet_lite0,mobilenet_v2')
    parser.add_argument('--cuts', default='', help='comma list (default: built-in list)')
    parser.add_argument('--scenario', default='clutter')
    parser.add_argument('--batches', type=int, default=None)
    parser.add_argument('--learn-rounds', type=int, default=None)
    parser.add_argument('--no-accuracy', action='store_true')
    parser.add_argument('--no-learn-time', action='store_true')
    parser.add_argument('--learn-time-cuts', default='',
                        help='measure learn time only at these cuts (default: every cut)')
    parser.add_argument('--random-init-learn-time', action='store_true',
                        help='also time backbones that only have random weights here')
    args = parser.parse_args()
    batches = args.batches or (10 if args.quick else 40)
    rounds = args.learn_rounds or 1
    tune_malloc_now()
    set_threads(args.threads)
    rec = Recorder('layer_table', {'threads': args.threads, 'scenario': args.scenario,
                                   'batches': batches, 'learn_rounds': rounds,
                                   'episode_frames': 300, 'replay_patterns': 1500,
                                   'epochs': 4})
    frames, labels = load_frames('clutter', 0, count=1500 + 300 * rounds)
    rows = []
    name = args.out or 'layer_table.json'
    for backbone in args.backbones.split(','):
        random_init = backbone == 'mobilenet_v2' and not has_v2_weights()
        cuts = args.cuts.split(',') if args.cuts else (
            LITE0_CUTS if backbone == 'efficientnet_lite0' else V2_CUTS)
        if args.quick:
            cuts = cuts[::2] + ([cuts[-1]] if len(cuts) % 2 == 0 else [])
        for cut in cuts:
            shape, per = bytes_rows(backbone, cut, random_init)
            row = {'backbone': backbone, 'cut': cut, 'random_init': random_init,
                   'latent_shape': list(shape), 'bytes_per_pattern': per,
                   'bytes_1500': {k: v * 1500 for k, v in per.items()}}
            timed = not args.no_learn_time and (
                not args.learn_time_cuts or cut in args.learn_time_cuts.split(',')) and (
                not random_init or args.random_init_learn_time)
            if timed:
                times = learn_time(backbone, cut, random_init, args.threads, frames, labels,
                                   rounds)
                row['learn_seconds'] = times
                row['learn_seconds_median'] = float(np.median(times))
            if not args.no_accuracy and not random_init:
                row['accuracy'] = accuracy(backbone, cut, args.threads, args.scenario,
                                           batches, 5)
            row['load_average'] = list(os.getloadavg())
            rows.append(row)
            print(row, flush=True)
            rec.write(name, rows=rows, partial=True)
    rec.write(name, rows=rows, partial=False)


if __name__ == '__main__':
    main()
