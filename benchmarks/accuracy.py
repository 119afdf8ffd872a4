"""Figure 7: final and mean accuracy over scenario runs, ours vs Avalanche vs baselines.

Methods (all on EfficientNet-Lite0 with ImageNet weights; the product's default cut unless said):

* ``ar1_free`` (our default), ``ar1``, ``cwr``: ``ContinualLearner`` fed precomputed latents
  with ``observe_latents`` (the lower part is frozen, so this equals feeding the frames).
* ``av_naive``, ``av_replay``, ``av_cumulative``: Avalanche 0.6.0 ``Naive``, ``Replay``
  (1,500 patterns) and ``Cumulative`` on our backbone and cut: the model is the pretrained
  upper part (plain BatchNorm, all layers trained) + a linear head, fed the same latents
  (frozen lower part); SGD lr 1e-3, momentum 0.9, weight decay 5e-4, 4 epochs, minibatch
  128. ``av_cumulative`` merges ``--cumulative-group`` consecutive batches into one
  experience (cumulative training is quadratic in the stream length; its final model is
  trained on all data seen either way).
* ``native``: native rehearsal (benchmarks/peers/native_rehearsal.py), the whole network
  trained on replayed raw images; needs the images, very slow here, so only on
  ``--native-batches`` first batches. ``--native-eval-every N`` evaluates it where
  ``latent-replay-eval --eval-every N`` evaluates ours; with ``--time-budget`` it stops at
  the first evaluation past the budget and keeps the curve so far (``partial``; no resume).
* ``ncm``, ``slda``: streaming heads on the frozen pretrained pooled features (one pass).

Accuracy is measured on the scenario's test list after the last batch (final) and at
``--checkpoints`` evenly spaced points of the stream (mean = average over them, the last
one included). Results go to ``benchmarks/results/accuracy_<scenario>.json`` after every
(run, method), so an interrupted run keeps what it finished. Latents are cached under
``benchmarks/results/tmp/``. ``av_cumulative`` also keeps its state there (``resume_*.pt``,
saved at most a minute apart): a killed or ``--time-budget``-stopped run resumes where it
stopped when started again with the same arguments (the same accuracies as one straight run;
checked by resuming after every experience of 8 clutter batches).
"""

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import DEFAULT_CUT, RESULTS, SCENARIOS, Recorder, set_threads, tune_malloc_now

CACHE = RESULTS / 'tmp'
ALL_METHODS = ('ncm', 'slda', 'av_naive', 'av_replay', 'ar1_free', 'cwr', 'ar1',
               'av_cumulative', 'native')


def scenario_of(name, run, max_batches):
    """Read a scenario run."""
    from ros2_latent_replay.core.scenario import read_scenario
    directory, images = SCENARIOS[name]
    return read_scenario(directory / f'run{run}', images, max_batches=max_batches)


def encode_all(scen, backbone, cut, threads, tag):
    """Latents (float32) and pooled pretrained features of every train/test frame (cached)."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    config = LearnerConfig(backbone=backbone, latent_layer=cut, threads=threads, replay_size=0)
    precision = config.effective_lower_precision()   # latents differ between precisions
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f'latents_{tag}_{backbone}_{cut}_{precision}.pt'
    entries = [e for b in scen.batches for e in b] + list(scen.test)
    if path.exists():
        data = torch.load(path, weights_only=True)
        if data['paths'] == [p for p, _ in entries]:
            return data
    learner = ContinualLearner(config)
    if learner.lower_precision != precision:
        raise RuntimeError(f'the lower part runs in {learner.lower_precision}, not {precision}')
    lat = []
    for start in range(0, len(entries), 256):
        frames = scen.load_images(entries[start:start + 256])
        lat.append(learner.encode(frames))
    latents = torch.cat(lat)
    upper = copy.deepcopy(learner._backbone.upper).eval()
    with torch.no_grad():
        feats = torch.cat([upper(latents[i:i + 256]) for i in range(0, len(latents), 256)])
    learner.close()
    data = {'paths': [p for p, _ in entries], 'latents': latents, 'features': feats,
            'labels': torch.tensor([lab for _, lab in entries])}
    torch.save(data, path)
    return data


def checkpoints_of(n_batches, count):
    """Batch indices after which the test set is evaluated (the last batch included)."""
    points = np.unique(np.linspace(0, n_batches - 1, max(1, count)).round().astype(int))
    return set(points.tolist()) | {n_batches - 1}


def split(data, scen):
    """Per-batch index arrays and test index array into the cached tensors."""
    sizes = [len(b) for b in scen.batches]
    starts = np.cumsum([0] + sizes)
    batches = [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
    test = np.arange(starts[-1], starts[-1] + len(scen.test))
    return batches, test


def run_ours(strategy, data, batches, test, points, threads, seed,
             backbone='efficientnet_lite0', cut=DEFAULT_CUT, **overrides):
    """Our learner on latents; returns accuracies at the checkpoints and seconds."""
    from ros2_latent_replay.core import ContinualLearner, LearnerConfig
    learner = ContinualLearner(LearnerConfig(strategy=strategy, threads=threads, seed=seed,
                                             backbone=backbone, latent_layer=cut, **overrides))
    lat, labels = data['latents'], data['labels']
    accs = []
    t0 = time.perf_counter()
    for i, idx in enumerate(batches):
        y = labels[idx]
        for label in torch.unique(y).tolist():
            learner.observe_latents(lat[idx][y == label], str(label))
        learner.learn()
        if i in points:
            probs = torch.cat([learner.probabilities(lat[test][k:k + 512])
                               for k in range(0, len(test), 512)])
            names = learner.known_classes
            pred = torch.tensor([int(names[j]) for j in probs.argmax(1).tolist()])
            accs.append(float((pred == labels[test]).float().mean()))
    seconds = time.perf_counter() - t0
    learner.close()
    return accs, seconds


def _upper_model(backbone, cut, classes):
    from ros2_latent_replay.core.backbones import build_backbone
    bb = build_backbone(backbone, cut=cut)
    upper = bb.upper
    for p in upper.parameters():
        p.requires_grad_(True)
    return nn.Sequential(upper, nn.Linear(bb.feature_dim, classes))


def _eval_model(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[k:k + 512]).argmax(1) for k in range(0, len(x), 512)])
    return float((pred == y).float().mean())


def run_avalanche(kind, data, batches, test, points, backbone, cut, classes, group, seed,
                  state_path=None, deadline=None):
    """Avalanche generic strategy on latents with our upper part + linear head.

    With ``state_path`` (``Cumulative`` only) the run saves its state there at most a minute
    apart and resumes from it when started again: weights, SGD momentum, random generators,
    the accuracies so far. ``deadline`` (``time.monotonic()``) stops it after the first experience
    that ends past it; it then returns ``None`` and keeps the state.
    """
    from peers.avalanche_peers import benchmark, make_generic
    torch.manual_seed(seed)
    model = _upper_model(backbone, cut, classes)
    strategy = make_generic(kind, model)
    lat, labels = data['latents'], data['labels']
    accs = []
    if kind == 'cumulative' and group > 1:
        groups = [list(range(s, min(s + group, len(batches))))
                  for s in range(0, len(batches), group)]
    else:
        groups = [[i] for i in range(len(batches))]
    pairs = []
    for g in groups:
        idx = np.concatenate([batches[i] for i in g])
        pairs.append((lat[idx], labels[idx]))
    stream = list(benchmark(pairs, pairs[:1]).train_stream)
    done, before = 0, 0.0
    if state_path is not None:
        if kind != 'cumulative':
            raise ValueError('only Cumulative runs can be resumed')
        state = _load_state(state_path, len(groups))
        if state is not None:
            done, before, accs = state['done'], state['seconds'], state['accs']
            _restore_cumulative(strategy, stream, state)
            print(f'resumed after {done} of {len(groups)} experiences '
                  f'({before:.0f} s so far)', flush=True)
    t0 = time.perf_counter()
    saved = t0
    for n, (g, exp) in enumerate(zip(groups, stream)):
        if n < done:
            continue
        strategy.train(exp)
        hit = [i for i in g if i in points]
        if hit:
            acc = _eval_model(strategy.model, lat[test], labels[test])
            accs += [acc] * len(hit)
        now = time.perf_counter()
        last = n == len(groups) - 1
        out_of_time = deadline is not None and time.monotonic() > deadline and not last
        if state_path is not None and (now - saved > 60 or out_of_time):
            _save_state(state_path, strategy, n + 1, len(groups), before + now - t0, accs)
            saved = now
        if out_of_time:
            print(f'stopped after {n + 1} of {len(groups)} experiences; the state is in '
                  f'{state_path}', flush=True)
            return None
    if state_path is not None and Path(state_path).exists():
        Path(state_path).unlink()
    return accs, before + time.perf_counter() - t0


def _save_state(path, strategy, done, total, seconds, accs):
    import random
    from common import machine
    state = {'done': done, 'total': total, 'seconds': seconds, 'accs': list(accs),
             'model': strategy.model.state_dict(),
             'optimizer': strategy.optimizer.state_dict(),
             'torch_rng': torch.get_rng_state(),
             'numpy_rng': np.random.get_state()[1].tolist(),
             'numpy_pos': int(np.random.get_state()[2]),
             'python_rng': repr(random.getstate()),
             'cpu': machine().get('cpu_model', '')}
    tmp = Path(str(path) + '.tmp')
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path, total):
    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state['total'] != total:
        raise RuntimeError(f'{path} holds a run of {state["total"]} experiences, not {total}')
    return state


def _restore_cumulative(strategy, stream, state):
    """Put a fresh ``Cumulative`` where a saved one stopped (Avalanche 0.6.0 internals)."""
    import ast
    import random
    from avalanche.benchmarks.utils.utils import concat_datasets
    for exp in stream[:state['done']]:   # the same nesting Cumulative builds one by one
        strategy.dataset = exp.dataset if strategy.dataset is None else \
            concat_datasets([strategy.dataset, exp.dataset])
    strategy.model.load_state_dict(state['model'])
    strategy.experience = stream[state['done'] - 1]
    strategy.make_optimizer(reset_optimizer_state=True)   # what the first train() does
    strategy.optimizer.load_state_dict(state['optimizer'])
    torch.set_rng_state(state['torch_rng'])
    np.random.set_state(('MT19937', np.asarray(state['numpy_rng'], dtype=np.uint32),
                         state['numpy_pos'], 0, 0.0))
    random.setstate(ast.literal_eval(state['python_rng']))


def run_native(scen, batches_n, test_entries, points, threads, seed, deadline=None,
               on_point=None):
    """Native rehearsal on raw images of the first ``batches_n`` batches.

    ``on_point(accs, learned, seconds)`` is called after every evaluation; with a
    ``deadline`` (``time.monotonic()`` seconds) the run stops at the first evaluation past it.
    Returns the accuracies, the seconds and the number of batches learned.
    """
    from ros2_latent_replay.core import LearnerConfig
    from peers.native_rehearsal import NativeRehearsal
    nr = NativeRehearsal(LearnerConfig(threads=threads, seed=seed))
    test_frames = scen.load_images(test_entries)
    test_y = np.asarray([lab for _, lab in test_entries])
    accs = []
    t0 = time.perf_counter()
    for i, batch in enumerate(scen.batches[:batches_n]):
        nr.learn(scen.load_images(batch), [lab for _, lab in batch])
        if i in points:
            pred = np.asarray(nr.predict_labels(test_frames))
            accs.append(float((pred == test_y).mean()))
            if on_point is not None:
                on_point(accs, i + 1, time.perf_counter() - t0)
            if deadline is not None and time.monotonic() >= deadline and i < batches_n - 1:
                return accs, time.perf_counter() - t0, i + 1
    return accs, time.perf_counter() - t0, batches_n


def run_stream_head(kind, data, batches, test, points, classes):
    """NCM or streaming LDA on the pooled pretrained features."""
    from peers.streaming_heads import NearestClassMean, StreamingLDA
    feats, labels = data['features'].numpy(), data['labels'].numpy()
    dim = feats.shape[1]
    head = NearestClassMean(dim, classes) if kind == 'ncm' else \
        StreamingLDA(dim, classes, shrinkage=float(kind.split('_')[1]) if '_' in kind else 1e-4)
    accs = []
    t0 = time.perf_counter()
    for i, idx in enumerate(batches):
        head.fit_batch(feats[idx], labels[idx])
        if i in points:
            accs.append(float((head.predict(feats[test]) == labels[test]).mean()))
    return accs, time.perf_counter() - t0


def main():
    """Run the methods over the scenario runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scenario', choices=sorted(SCENARIOS), required=True)
    parser.add_argument('--runs', default='0,1,2,3,4')
    parser.add_argument('--methods', default=','.join(ALL_METHODS))
    parser.add_argument('--max-batches', type=int, default=None)
    parser.add_argument('--native-batches', type=int, default=40)
    parser.add_argument('--native-eval-every', type=int, default=0,
                        help='evaluate native rehearsal after every N-th batch (and its last) '
                             'instead of at --checkpoints points: the batches where '
                             'latent-replay-eval --eval-every N evaluates ours')
    parser.add_argument('--cumulative-group', type=int, default=10)
    parser.add_argument('--checkpoints', type=int, default=10)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--backbone', default='efficientnet_lite0')
    parser.add_argument('--cut', default=DEFAULT_CUT)
    parser.add_argument('--out', default=None)
    parser.add_argument('--time-budget', type=float, default=None,
                        help='seconds; av_cumulative stops after the experience that passes '
                             'it and resumes from benchmarks/results/tmp/ when run again; '
                             'native stops at the first evaluation past it and keeps the '
                             'curve so far (marked partial; it does not resume)')
    parser.add_argument('--no-resume', action='store_true',
                        help='start av_cumulative afresh even where a saved state exists')
    parser.add_argument('--progress', action='store_true',
                        help='only list the saved av_cumulative states (experiences done, '
                             'accuracies so far) and write them to accuracy_resume_progress.json')
    args = parser.parse_args()
    if args.progress:
        write_progress(Recorder('accuracy_resume_progress', vars(args)))
        return
    tune_malloc_now()
    set_threads(args.threads)
    out_name = args.out or f'accuracy_{args.scenario}.json'
    rec = Recorder('accuracy', vars(args))
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    previous = {}
    if (RESULTS / out_name).exists():
        import json
        previous = json.loads((RESULTS / out_name).read_text()).get('results', {})
    results = previous
    stopped = False   # a run stopped by --time-budget: the file is not complete
    methods = [m for m in args.methods.split(',') if m]   # variants: name@key=v;key=v
    for run in [int(r) for r in args.runs.split(',')]:
        scen = scenario_of(args.scenario, run, args.max_batches)
        data = encode_all(scen, args.backbone, args.cut, args.threads,
                          f'{args.scenario}_run{run}_b{len(scen.batches)}')
        batches, test = split(data, scen)
        classes = int(data['labels'].max()) + 1
        points = checkpoints_of(len(batches), args.checkpoints)
        for method in methods:
            key = f'run{run}'
            if method.split('@')[0] in ('ar1_free', 'ar1', 'cwr'):
                # 'ar1_free@lr_incremental=3e-4,epochs=4': a variant with config overrides
                name, _, extra = method.partition('@')
                overrides = {k: type(getattr(__import__('ros2_latent_replay.core.config',
                                                        fromlist=['LearnerConfig'])
                                             .LearnerConfig, k))(v)
                             for k, v in (kv.split('=') for kv in extra.split(';') if kv)}
                accs, sec = run_ours(name, data, batches, test, points, args.threads, run,
                                     backbone=args.backbone, cut=args.cut, **overrides)
                n_batches = len(batches)
            elif method.startswith('av_'):
                state_path = None
                if method == 'av_cumulative':
                    state_path = CACHE / (f'resume_{args.scenario}_run{run}_b{len(batches)}_'
                                          f'g{args.cumulative_group}_{args.backbone}_'
                                          f'{args.cut}.pt')
                    if args.no_resume and state_path.exists():
                        state_path.unlink()
                done = run_avalanche(method[3:], data, batches, test, points,
                                     args.backbone, args.cut, classes,
                                     args.cumulative_group, run, state_path=state_path,
                                     deadline=deadline)
                if done is None:
                    stopped = True
                    continue
                accs, sec = done
                n_batches = len(batches)
            elif method == 'native':
                n_batches = min(args.native_batches, len(batches))
                npoints = checkpoints_of(n_batches, args.checkpoints)
                if args.native_eval_every:
                    npoints = set(range(args.native_eval_every - 1, n_batches,
                                        args.native_eval_every)) | {n_batches - 1}
                evaluated = sorted(npoints)

                def keep(accs, learned, sec, key=key):   # a kill keeps the curve so far
                    entry = method_entry(accs, sec, learned,
                                         [b + 1 for b in evaluated[:len(accs)]])
                    entry['partial'] = learned < n_batches
                    results.setdefault('native', {})[key] = entry
                    rec.write(out_name, results=results, summary=summarise(results),
                              complete=False)

                accs, sec, learned = run_native(scen, n_batches, scen.test, npoints,
                                                args.threads, run, deadline=deadline,
                                                on_point=keep)
                if learned < n_batches:   # stopped by --time-budget after an evaluation
                    stopped = True
                    print(f'{args.scenario} run{run} native: stopped by the time budget '
                          f'after {learned} of {n_batches} batches', flush=True)
                    continue
            else:
                accs, sec = run_stream_head(method, data, batches, test, points, classes)
                n_batches = len(batches)
            results.setdefault(method, {})[key] = method_entry(
                accs, sec, n_batches,
                [b + 1 for b in evaluated] if method == 'native' else None)
            print(f'{args.scenario} run{run} {method}: final {accs[-1]:.4f} mean '
                  f'{np.mean(accs):.4f} ({sec:.0f} s, {n_batches} batches)', flush=True)
            rec.write(out_name, results=results, summary=summarise(results))
    rec.write(out_name, results=results, summary=summarise(results), complete=not stopped)


def method_entry(accs, sec, n_batches, eval_batches=None):
    """One method's result on one run: accuracy curve, final/mean, time, machine load."""
    entry = {'final': accs[-1], 'mean': float(np.mean(accs)), 'curve': list(accs),
             'seconds': sec, 'batches': n_batches, 'load_average': list(os.getloadavg())}
    if eval_batches is not None:
        entry['eval_batches'] = eval_batches
    return entry


def write_progress(rec):
    """Write what the saved ``av_cumulative`` states under results/tmp/ have done so far."""
    states = {}
    for path in sorted(CACHE.glob('resume_*.pt')):
        state = torch.load(path, weights_only=True)
        states[path.name] = {'experiences_done': state['done'], 'experiences': state['total'],
                             'seconds': state['seconds'], 'accuracies_so_far': state['accs'],
                             'saved_on_cpu': state['cpu'],
                             'saved_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                                        time.gmtime(path.stat().st_mtime))}
        print(f"{path.name}: {state['done']} of {state['total']} experiences, "
              f"{state['seconds']:.0f} s, accuracies {[round(a, 4) for a in state['accs']]}")
    rec.write('accuracy_resume_progress.json', states=states)


def summarise(results):
    """Mean and std over runs of final and mean accuracy, per method (and batches used)."""
    out = {}
    for method, runs in results.items():
        finals = [r['final'] for r in runs.values()]
        means = [r['mean'] for r in runs.values()]
        out[method] = {'runs': sorted(runs), 'n': len(finals),
                       'final_mean': float(np.mean(finals)),
                       'final_std': float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                       'mean_mean': float(np.mean(means)),
                       'mean_std': float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
                       'batches': sorted({r['batches'] for r in runs.values()})}
    return out


if __name__ == '__main__':
    main()
