"""Figure 5: replay memory bytes per storage type, vs the paper's cut and Avalanche AR1.

Replay memory for 1,500 patterns; resident memory of a learner process.

Bytes per pattern come from the core (``latent_codec.bytes_per_pattern``: uint8 storage
includes its per-channel float32 scale and offset) and the real shared-memory segment size
(``SharedReplayBuffer.nbytes``, labels and header included). The paper's reference store is
MobileNetV1 at ``conv5_4/dw`` (512x8x8 at 128x128) in float32. Avalanche AR1's store is
measured on its own model when Avalanche is importable (bench venv). Resident memory (RSS,
peak RSS) of a fresh learner process is sampled after construction, after filling the
memory and after a learning step (one subprocess per backend runtime).
"""

import argparse
import json
import subprocess
import sys

from common import REPO, Recorder, parse_common

CAPACITY = 1500

_RSS_PROBE = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/benchmarks')
from common import load_frames, rss_bytes, peak_rss_bytes, set_threads
set_threads(int(sys.argv[2]))
out = {'python_start_rss': rss_bytes()}
from ros2_latent_replay.core import ContinualLearner, LearnerConfig
from learn_latency import observe_grouped
frames, labels = load_frames('clutter', 0, count=1800)
out['frames_loaded_rss'] = rss_bytes()
learner = ContinualLearner(LearnerConfig(threads=int(sys.argv[2]), lower_runtime=sys.argv[3]))
out['constructed_rss'] = rss_bytes()
learner.config.epochs = 1
observe_grouped(learner, frames[:1000], labels[:1000]); learner.learn()
observe_grouped(learner, frames[1000:1500], labels[1000:1500]); learner.learn()
out['memory_full_rss'] = rss_bytes()
learner.config.epochs = 4
observe_grouped(learner, frames[1500:1800], labels[1500:1800]); learner.learn()
out['after_learn_rss'] = rss_bytes()
out['peak_rss'] = peak_rss_bytes()
out['replay_bytes'] = learner.stats()['replay_bytes']
out['lower_backend'] = learner.lower_backend
print('RESULT' + json.dumps(out))
'''


def storage_table():
    """Bytes per pattern and per 1,500 patterns at the default cut and at conv5_4/dw."""
    from ros2_latent_replay.core.backbones import build_backbone, default_cut
    from ros2_latent_replay.core.latent_codec import bytes_per_pattern
    from ros2_latent_replay.core.replay_buffer import SharedReplayBuffer
    rows = []
    cuts = [('efficientnet_lite0', default_cut('efficientnet_lite0'), False),
            ('mobilenet_v1', 'conv5_4/dw', True)]
    for name, cut, random_init in cuts:
        backbone = build_backbone(name, cut=cut, random_init=random_init)
        shape = tuple(backbone.latent_shape)
        for storage in ('uint8', 'float16', 'float32'):
            per = bytes_per_pattern(storage, shape)
            with SharedReplayBuffer(CAPACITY, shape, storage=storage) as buf:
                segment = int(buf.nbytes)
            rows.append({'backbone': name, 'cut': cut, 'latent_shape': list(shape),
                         'storage': storage, 'bytes_per_pattern': per,
                         'bytes_1500': per * CAPACITY, 'shm_segment_bytes': segment})
    return rows


def avalanche_ar1_store():
    """Avalanche AR1's replay store (float32 latents of its MobileNetV1 at layer 19)."""
    try:
        import torch
        from peers.avalanche_peers import make_ar1
    except ImportError as exc:
        return {'available': False, 'why': str(exc)}
    try:
        strategy = make_ar1(rm_sz=CAPACITY)
    except Exception as exc:  # noqa: B902 - recorded, not fatal
        return {'available': False, 'why': f'{type(exc).__name__}: {exc}'}
    model = strategy.model.eval()
    with torch.no_grad():
        lat = model.lat_features(torch.zeros(1, 3, 128, 128))
    shape = list(lat.shape[1:])
    per = lat.element_size() * lat[0].nelement()
    return {'available': True, 'latent_shape': shape, 'dtype': str(lat.dtype),
            'bytes_per_pattern': per, 'bytes_1500': per * CAPACITY,
            'note': 'labels kept as an int64 tensor beside it (8 B per pattern)'}


def process_rss(threads):
    """RSS of a fresh learner process per lower runtime."""
    out = {}
    for runtime in ('onnxruntime', 'torch'):
        proc = subprocess.run([sys.executable, '-c', _RSS_PROBE, str(REPO), str(threads),
                               runtime], capture_output=True, text=True, timeout=900)
        line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT')]
        out[runtime] = json.loads(line[-1][6:]) if line else {'error': proc.stderr[-2000:]}
        print(runtime, out[runtime], flush=True)
    return out


def main():
    """Compute the storage table, Avalanche's store and the process RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--no-rss', action='store_true')
    args = parser.parse_args()
    rec = Recorder('memory', {'capacity': CAPACITY, 'threads': args.threads})
    rows = storage_table()
    for row in rows:
        print(row, flush=True)
    ar1 = avalanche_ar1_store()
    print('avalanche', ar1, flush=True)
    rec.write(args.out or 'memory.json', partial=True, storage=rows, avalanche_ar1=ar1)
    rss = {} if args.no_rss else process_rss(args.threads)
    default = next(r for r in rows if r['backbone'] == 'efficientnet_lite0'
                   and r['storage'] == 'uint8')
    paper = next(r for r in rows if r['cut'] == 'conv5_4/dw' and r['storage'] == 'float32')
    floors = {'default uint8 1500 <= 8 MB': default['bytes_1500'] <= 8_000_000}
    rec.write(args.out or 'memory.json', partial=False, storage=rows, avalanche_ar1=ar1,
              learner_process_rss=rss,
              paper_over_default=paper['bytes_1500'] / default['bytes_1500'],
              floors_met=floors)
    print(floors)


if __name__ == '__main__':
    main()
