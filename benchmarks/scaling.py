"""Figure 6: learn time and memory vs batches seen and vs number of classes.

* vs batches seen: the default learner is fed the COIL-100 clutter NIC run0 stream (latents
  precomputed) batch by batch; at checkpoints (``--points``) one extra 300-frame episode
  is learned with the default 4 epochs and timed; the other batches run with 1 epoch to
  keep the run short (their time is recorded too, per batch). Replay memory bytes, fill,
  and process RSS are sampled at every checkpoint.
* vs classes: for K in ``--classes``, a learner with ``max_classes=K`` is taught real frames
  relabelled into K classes (label = frame index mod K, a timing-only labelling), its
  memory filled to 1,500 patterns; one 300-frame episode (4 epochs) is timed.
"""

import argparse
import os
import time

import numpy as np
import torch

from common import (DEFAULT_CUT, Recorder, load_frames, parse_common, rss_bytes,
                    set_threads, tune_malloc_now)


def timed_episode(learner, lat, lab):
    """Learn one episode of latents with the default 4 epochs; return seconds."""
    learner.config.epochs = 4
    for label in np.unique(lab):
        learner.observe_latents(lat[lab == label], str(int(label)))
    t0 = time.perf_counter()
    learner.learn()
    seconds = time.perf_counter() - t0
    learner.config.epochs = 1
    return seconds


def vs_batches(threads, points, episode_lat, episode_lab):
    """Checkpointed learn time and memory along the clutter stream."""
    from accuracy import encode_all, scenario_of, split
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    scen = scenario_of('clutter', 0, None)
    data = encode_all(scen, 'efficientnet_lite0', DEFAULT_CUT, threads,
                      f'clutter_run0_b{len(scen.batches)}')
    batches, _ = split(data, scen)
    lat, labels = data['latents'], data['labels']
    learner = ContinualLearner(LearnerConfig(threads=threads))
    learner.config.epochs = 1
    rows, filler = [], []
    last = max(points)
    for i, idx in enumerate(batches[:last + 1]):
        y = labels[idx]
        for label in torch.unique(y).tolist():
            learner.observe_latents(lat[idx][y == label], str(label))
        t0 = time.perf_counter()
        learner.learn()
        filler.append(time.perf_counter() - t0)
        if i in points:
            sec = timed_episode(learner, episode_lat, episode_lab)
            stats = learner.stats()
            rows.append({'batches_seen': i + 1, 'learn_seconds_300': sec,
                         'replay_fill': stats['replay_fill'],
                         'replay_bytes': stats['replay_bytes'],
                         'known_classes': stats['known_classes'], 'rss_bytes': rss_bytes(),
                         'load_average': list(os.getloadavg())})
            print(rows[-1], flush=True)
    learner.close()
    return rows, filler


def vs_classes(threads, counts, frames, labels):
    """Learn time and memory for K classes."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    rows = []
    for k in counts:
        learner = ContinualLearner(LearnerConfig(threads=threads, max_classes=max(k, 2)))
        fake = np.arange(len(frames)) % k
        learner.config.epochs = 1
        lat = learner.encode(frames)
        for s, e in ((0, 1000), (1000, 1500)):
            for label in np.unique(fake[s:e]):
                learner.observe_latents(lat[s:e][fake[s:e] == label], str(int(label)))
            learner.learn()
        sec = timed_episode(learner, lat[1500:1800], fake[1500:1800])
        stats = learner.stats()
        rows.append({'classes': k, 'learn_seconds_300': sec,
                     'replay_fill': stats['replay_fill'], 'replay_bytes': stats['replay_bytes'],
                     'known_classes': stats['known_classes'], 'rss_bytes': rss_bytes(),
                     'load_average': list(os.getloadavg())})
        print(rows[-1], flush=True)
        learner.close()
    return rows


def main():
    """Measure both curves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--points', default=None, help='comma list of batch indices')
    parser.add_argument('--classes', default=None, help='comma list of class counts')
    parser.add_argument('--skip-batches', action='store_true')
    args = parser.parse_args()
    points = [int(p) for p in (args.points or ('0,10,30' if args.quick
                                               else '0,25,50,100,200,300,382')).split(',')]
    classes = [int(c) for c in (args.classes or ('10,100' if args.quick
                                                 else '10,25,50,100,200')).split(',')]
    tune_malloc_now()
    set_threads(args.threads)
    rec = Recorder('scaling', {'threads': args.threads, 'points': points, 'classes': classes})
    frames, labels = load_frames('clutter', 0, count=1800)
    name = args.out or 'scaling.json'
    by_classes = vs_classes(args.threads, classes, frames, labels)
    rec.write(name, vs_classes=by_classes, partial=True)
    by_batches, filler = [], []
    if not args.skip_batches:
        from ros2_latent_replay.core import ContinualLearner, LearnerConfig
        tmp = ContinualLearner(LearnerConfig(threads=args.threads, replay_size=0))
        ep_lat = tmp.encode(frames[1500:1800])
        tmp.close()
        ep_lab = labels[1500:1800]
        by_batches, filler = vs_batches(args.threads, set(points), ep_lat, ep_lab)
    rec.write(name, vs_classes=by_classes, vs_batches=by_batches,
              filler_learn_seconds_1_epoch=filler, partial=False)


if __name__ == '__main__':
    main()
