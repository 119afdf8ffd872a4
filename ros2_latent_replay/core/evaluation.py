"""Offline evaluation: a stream of training batches through the learner, tested after each.

This is the paper's protocol (CORe50 NICv2): the learner sees the training batches one at a
time, each as one teaching episode (``observe`` then ``learn``, exactly what the ROS node does
for a labelled episode and a ``~/learn`` call), and after every batch (or every k batches) it
classifies the whole fixed test set. Classes not taught yet count as errors, so the curve
starts low and rises as classes arrive.

Latents come from the learner's own frozen lower part (:meth:`ContinualLearner.encode`),
which is what ``observe`` computes internally; they are computed once per data set and per
(backbone, cut, input size, weights) and shared between the configurations of one run
(:class:`LatentCache`). A configuration whose lower part trains (``lower_mode: slowed``) goes
through ``observe(frames)`` and ``predict(frames)`` instead.

Everything here is ROS-free; bags are turned into a source by
``ros2_latent_replay.evaluation.bag_reader``. Accuracies are in percent.
"""

import functools
import json
import math
import random
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, \
    Tuple

import numpy as np

from .class_registry import normalize_label
from .config import LearnerConfig
from .errors import ConfigError, InputError
from .scenario import Scenario

RESULTS_FORMAT = 'ros2_latent_replay.evaluation'
RESULTS_VERSION = 1
_EVAL_CHUNK = 512


# ---------------------------------------------------------------------- sources
class ScenarioSource:
    """A :class:`~ros2_latent_replay.core.scenario.Scenario` as an evaluation source.

    Class names are the scenario's label names (the number as text without a names file).
    ``test_stride`` keeps every k-th test frame (quick runs); 1 keeps them all.
    """

    def __init__(self, scenario: Scenario, test_stride: int = 1, name: str = '') -> None:
        """Wrap ``scenario``; images are decoded when a batch is asked for."""
        if int(test_stride) < 1:
            raise InputError(f'test_stride must be >= 1, got {test_stride}')
        self.scenario = scenario
        self._test = scenario.test[::int(test_stride)]
        self.test_stride = int(test_stride)
        self.name = name or _scenario_name(scenario.directory)

    @property
    def num_batches(self) -> int:
        """Number of training batches."""
        return len(self.scenario.batches)

    def batch_labels(self, index: int) -> List[str]:
        """Class name of every frame of training batch ``index``, in order."""
        return [self.scenario.class_name(label) for _, label in self.scenario.batches[index]]

    def load_batch(self, index: int) -> Tuple[Any, List[str]]:
        """Frames of training batch ``index`` and their class names (unreadable ones dropped)."""
        return self.scenario.load_entries(self.scenario.batches[index])

    @property
    def test_labels(self) -> List[str]:
        """Class name of every test frame."""
        return [self.scenario.class_name(label) for _, label in self._test]

    def load_test(self) -> Tuple[Any, List[str]]:
        """Test frames and their class names."""
        return self.scenario.load_entries(self._test)

    def describe(self) -> Dict[str, Any]:
        """Describe this source for the results file."""
        return {'kind': 'scenario', 'name': self.name,
                'directory': str(self.scenario.directory),
                'images': str(self.scenario.images), 'batches': self.num_batches,
                'training_frames': self.scenario.num_training_frames,
                'test_frames': len(self._test), 'test_stride': self.test_stride,
                'problems': list(self.scenario.problems)}


def _scenario_name(directory: Path) -> str:
    parts = Path(directory).resolve().parts
    return '/'.join(parts[-2:]) if len(parts) >= 2 else str(directory)


# ---------------------------------------------------------------------- latent cache
class LatentCache:
    """Latents of one source, kept in memory per frozen lower part.

    The key is what determines the latents: backbone, cut, input size, weights, random init
    and the lower part's runtime. Configurations that differ only above the cut share them.
    """

    def __init__(self, keep_batches: bool = True) -> None:
        """Start empty.

        ``keep_batches=False`` keeps only the test set's latents: a single configuration
        uses each batch once, so keeping them would only cost memory.
        """
        self._store: Dict[Tuple[Hashable, ...], Any] = {}
        self.keep_batches = keep_batches

    @staticmethod
    def key(config: LearnerConfig) -> Tuple[Hashable, ...]:
        """Return what the latents of ``config`` depend on."""
        return (config.backbone, config.latent_layer, config.input_size, config.weights,
                config.random_init, config.lower_runtime, config.effective_lower_precision())

    def get(self, config: LearnerConfig, item: Hashable, compute: Callable[[], Any]) -> Any:
        """Return the cached value of ``item`` for ``config``'s lower part, computing it once."""
        full = self.key(config) + (item,)
        if full in self._store:
            return self._store[full]
        value = compute()
        if self.keep_batches or not (isinstance(item, tuple) and item and item[0] == 'batch'):
            self._store[full] = value
        return value

    def clear(self) -> None:
        """Drop everything (between sources)."""
        self._store.clear()

    def __len__(self) -> int:
        """Return the number of cached items."""
        return len(self._store)


# ---------------------------------------------------------------------- configuration files
def learner_values_from_yaml(path) -> Tuple[Dict[str, Any], List[str]]:
    """Read learner settings from a node parameters file; also return the ignored keys.

    Accepts the node's ``params.yaml`` (``/**:`` or ``<node name>:`` then
    ``ros__parameters:``) or a plain mapping of settings. Keys that are not
    :class:`LearnerConfig` fields (the node's own parameters such as ``state_file``) are
    returned as ignored, as the node would not pass them to the learner either. Numbers
    written without a dot (``1e-3``, which YAML 1.1 reads as text) are accepted as floats.
    """
    import yaml

    path = Path(path)
    try:
        with open(path, encoding='utf-8') as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f'cannot read the configuration file {path}: {exc}') from None
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path} is not valid YAML: {exc}') from None
    if document is None:
        return {}, []
    if not isinstance(document, dict):
        raise ConfigError(f'{path} must hold a mapping, not a {type(document).__name__}')
    mapping = _ros_parameters(document, path)
    names = {f.name: f for f in fields(LearnerConfig)}
    values, ignored = {}, []
    for key, value in mapping.items():
        if key not in names:
            ignored.append(str(key))
            continue
        default = names[key].default
        if isinstance(default, float) and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f'{path}: {key}={value!r} is not a number') from None
        values[key] = value
    return values, sorted(ignored)


def _ros_parameters(document: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """Return the ``ros__parameters`` mapping of a params file (or the document itself)."""
    sections = {k: v['ros__parameters'] for k, v in document.items()
                if isinstance(v, dict) and 'ros__parameters' in v}
    if not sections:
        nested = {k: v for k, v in document.items() if isinstance(v, dict)}
        for outer, inner in nested.items():   # namespace: node: ros__parameters
            for node, body in inner.items():
                if isinstance(body, dict) and 'ros__parameters' in body:
                    sections[f'{outer}/{node}'] = body['ros__parameters']
    if not sections:
        return document
    merged: Dict[str, Any] = {}
    for preferred in ('/**', '**'):   # wildcard first, then node-specific entries on top
        if preferred in sections:
            merged.update(sections.pop(preferred) or {})
    for body in sections.values():
        if body and not isinstance(body, dict):
            raise ConfigError(f'{path}: ros__parameters must be a mapping')
        merged.update(body or {})
    return merged


def load_config(path=None, overrides: Optional[Mapping[str, Any]] = None
                ) -> Tuple[LearnerConfig, List[str]]:
    """Build a validated :class:`LearnerConfig`: defaults, then ``path``, then overrides."""
    values, ignored = learner_values_from_yaml(path) if path else ({}, [])
    values.update(overrides or {})
    return LearnerConfig.from_dict(values), ignored


def parse_override(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` -> (key, typed value) using the type of the LearnerConfig field."""
    if '=' not in text:
        raise ConfigError(f'expected KEY=VALUE, got {text!r}')
    key, raw = (part.strip() for part in text.split('=', 1))
    known = {f.name: f.default for f in fields(LearnerConfig)}
    if key not in known:
        raise ConfigError(f'unknown learner setting {key!r}; known: {", ".join(sorted(known))}')
    default = known[key]
    try:
        if isinstance(default, bool):
            if raw.lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
                raise ValueError(raw)
            return key, raw.lower() in ('true', '1', 'yes')
        if isinstance(default, int):
            return key, int(raw)
        if isinstance(default, float):
            return key, float(raw)
    except ValueError:
        raise ConfigError(f'{key}={raw!r}: expected a {type(default).__name__}') from None
    return key, raw


# ---------------------------------------------------------------------- the evaluation loop
def label_runs(labels: Sequence[str]) -> List[Tuple[str, int, int]]:
    """Consecutive runs of one label as (label, start, end): one ``observe`` call each."""
    runs: List[Tuple[str, int, int]] = []
    start = 0
    for index in range(1, len(labels) + 1):
        if index == len(labels) or labels[index] != labels[start]:
            runs.append((labels[start], start, index))
            start = index
    return runs


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (the learner also seeds its own generators)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _subset(frames: Any, start: int, end: int) -> Any:
    return frames[start:end]


def _accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    if not truth:
        return float('nan')
    hits = sum(1 for p, t in zip(predicted, truth) if p == t)
    return 100.0 * hits / len(truth)


def evaluate(source: Any, config: Optional[LearnerConfig] = None, name: str = 'default',
             eval_every: int = 1, cache: Optional[LatentCache] = None,
             progress: bool = True, on_batch: Optional[Callable[[Dict[str, Any]], None]] = None,
             state_file=None, resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run every training batch of ``source`` through a fresh learner; test as it goes.

    ``source`` provides ``num_batches``, ``batch_labels(i)``, ``load_batch(i)``,
    ``test_labels``, ``load_test()`` and ``describe()`` (:class:`ScenarioSource` or a bag
    source). The test set is classified after every ``eval_every``-th batch and after the
    last one. Returns the run's record (see :func:`write_results` for the layout).

    With ``state_file`` the learner's whole state is saved there after every batch, after
    ``on_batch`` has recorded the batch; ``resume`` (``{'batches': records so far}``)
    continues a run from that file, with the same results as an uninterrupted run (the
    learner's randomness is seeded per step). A stop between the record and the state (the
    records hold one learned batch more than the state) learns that batch again.
    """
    from .learner import ContinualLearner

    config = (config or LearnerConfig()).validate()
    if int(eval_every) < 1:
        raise InputError(f'eval_every must be >= 1, got {eval_every}')
    if source.num_batches < 1:
        raise InputError('the source holds no training batches')
    cache = cache if cache is not None else LatentCache()
    frozen = config.lower_mode == 'frozen'
    seed_everything(int(config.seed))
    started = time.perf_counter()
    learner = ContinualLearner(config)
    batches: List[Dict[str, Any]] = []
    totals = {'encode': 0.0, 'train': 0.0, 'eval': 0.0}
    earlier_wall = 0.0
    try:
        if resume:
            batches = [dict(b) for b in resume['batches']]
            learner.load(str(state_file))
            learned = sum(1 for b in batches if b.get('learned'))
            if learner.steps == learned - 1 and batches[-1].get('learned'):
                batches.pop()       # stopped before its state was saved: learn it again
            elif learner.steps != learned:
                raise InputError(f'{state_file} holds {learner.steps} steps but the progress '
                                 f'file {learned}')
            for key, field_name in (('encode', 'encode_seconds'), ('train', 'train_seconds'),
                                    ('eval', 'eval_seconds')):
                totals[key] = sum(b.get(field_name, 0.0) for b in batches)
            earlier_wall = float(batches[-1].get('wall_seconds', 0.0)) if batches else 0.0
        test_truth = [normalize_label(t, config.max_label_length) for t in source.test_labels]
        test_latents = None
        if frozen:
            def encode_test():
                frames, labels = source.load_test()
                return learner.encode(frames), labels

            t0 = time.perf_counter()
            test_latents, loaded = cache.get(config, ('test', id(source)), encode_test)
            totals['encode'] += time.perf_counter() - t0
            test_truth = [normalize_label(t, config.max_label_length) for t in loaded]
        bar = _progress(source.num_batches, f'{name} {getattr(source, "name", "")}'.strip(),
                        progress)
        if bar is not None and batches:
            bar.update(len(batches))
        try:
            for index in range(len(batches), source.num_batches):
                record = _one_batch(learner, source, index, config, cache, frozen, totals)
                last = index == source.num_batches - 1
                if record.get('learned') and ((index + 1) % int(eval_every) == 0 or last):
                    t0 = time.perf_counter()
                    record['accuracy'] = round(
                        _test_accuracy(learner, source, test_latents, test_truth), 4)
                    record['eval_seconds'] = round(time.perf_counter() - t0, 4)
                    totals['eval'] += record['eval_seconds']
                batches.append(record)
                record['wall_seconds'] = round(earlier_wall + time.perf_counter() - started, 3)
                if on_batch is not None:
                    on_batch(record)
                if state_file is not None:
                    learner.save(str(state_file))
                if bar is not None:
                    bar.update(1)
                    if 'accuracy' in record:
                        bar.set_postfix(acc=f'{record["accuracy"]:.1f}%',
                                        classes=record['known_classes'])
        finally:
            if bar is not None:
                bar.close()
        stats = learner.stats()
    finally:
        learner.close()
    curve = [b['accuracy'] for b in batches if 'accuracy' in b]
    final = next((b['accuracy'] for b in reversed(batches) if 'accuracy' in b), float('nan'))
    return {
        'name': name,
        'source': source.describe(),
        'config': config.to_dict(),
        'seed': int(config.seed),
        'eval_every': int(eval_every),
        'test_frames': len(test_truth),
        'batches': batches,
        'final_accuracy': round(final, 4),
        'mean_accuracy': round(float(np.mean(curve)), 4) if curve else float('nan'),
        'known_classes': stats['known_classes'],
        'replay_fill': stats['replay_fill'],
        'replay_capacity': stats['replay_capacity'],
        'lower_backend': stats['lower_backend'],
        'frames_dropped': sum(b['dropped'] for b in batches),
        'total_train_seconds': round(totals['train'], 3),
        'total_encode_seconds': round(totals['encode'], 3),
        'total_eval_seconds': round(totals['eval'], 3),
        'wall_seconds': round(earlier_wall + time.perf_counter() - started, 3),
        'resumed': bool(resume),
    }


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='batch', dynamic_ncols=True, mininterval=1.0)


def _one_batch(learner: Any, source: Any, index: int, config: LearnerConfig,
               cache: LatentCache, frozen: bool, totals: Dict[str, float]) -> Dict[str, Any]:
    """Observe batch ``index`` as one episode and learn it; return the batch's record."""
    t0 = time.perf_counter()
    if frozen:
        def encode_batch():
            frames, labels = source.load_batch(index)
            if not labels:
                return None, []
            return learner.encode(frames), labels

        latents, labels = cache.get(config, ('batch', id(source), index), encode_batch)
    else:
        latents, labels = source.load_batch(index)
    encode_seconds = time.perf_counter() - t0
    totals['encode'] += encode_seconds
    record: Dict[str, Any] = {'batch': index, 'frames': len(labels),
                              'labels': list(dict.fromkeys(labels)),
                              'encode_seconds': round(encode_seconds, 4)}
    if not labels:
        record.update(learned=False, kept=0, dropped=0, known_classes=len(learner.known_classes),
                      replay_fill=learner.replay_fill, train_seconds=0.0, learn_seconds=0.0)
        return record
    t1 = time.perf_counter()
    kept = 0
    for label, start, end in label_runs(labels):
        part = _subset(latents, start, end)
        kept += learner.observe_latents(part, label) if frozen else learner.observe(part, label)
    summary = learner.learn()
    train_seconds = time.perf_counter() - t1
    totals['train'] += train_seconds
    record.update(learned=True, kept=kept, dropped=len(labels) - kept,
                  new_classes=summary['new_classes'],
                  known_classes=summary['known_classes'], replay_fill=summary['replay_fill'],
                  train_seconds=round(train_seconds, 4), learn_seconds=summary['seconds'],
                  loss=summary['loss'])
    return record


def _test_accuracy(learner: Any, source: Any, test_latents: Any,
                   truth: Sequence[str]) -> float:
    predicted: List[str] = []
    if test_latents is not None:
        for start in range(0, len(test_latents), _EVAL_CHUNK):
            chunk = test_latents[start:start + _EVAL_CHUNK]
            predicted.extend(r['label'] for r in learner.predict_latents(chunk, top_k=1))
    else:
        frames, _ = source.load_test()
        for start in range(0, len(frames), _EVAL_CHUNK):
            predicted.extend(r['label'] for r in learner.predict(
                frames[start:start + _EVAL_CHUNK], top_k=1))
    return _accuracy(predicted, truth)


def compare(sources: Sequence[Any], configs: Sequence[Tuple[str, LearnerConfig]],
            eval_every: int = 1, progress: bool = True,
            on_run: Optional[Callable[[Dict[str, Any]], None]] = None,
            on_batch: Optional[Callable[[str, Any, Dict[str, Any]], None]] = None,
            done: Sequence[Tuple[str, str]] = (), state_file=None,
            resume: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Run every configuration on every source.

    Sources are the outer loop, so one source's latents are encoded once and shared;
    ``on_run`` is called after each run (e.g. to save progress), ``on_batch`` with the
    configuration's name, the source and the batch's record after each batch. Runs whose
    (name, source name) is in ``done`` are skipped; ``resume`` (with ``name`` and
    ``source``) continues that run from ``state_file`` (see :func:`evaluate`).
    """
    runs = []
    keys = [LatentCache.key(config) for _, config in configs]
    shared = len(set(keys)) < len(keys)
    for source in sources:
        cache = LatentCache(keep_batches=shared)
        for name, config in configs:
            if (name, source.name) in set(done):
                continue
            hook = None if on_batch is None else functools.partial(on_batch, name, source)
            this = resume if resume and (resume.get('name'), resume.get('source')) == \
                (name, source.name) else None
            run = evaluate(source, config, name=name, eval_every=eval_every, cache=cache,
                           progress=progress, on_batch=hook, state_file=state_file,
                           resume=this)
            runs.append(run)
            if on_run is not None:
                on_run(run)
        cache.clear()
    return runs


# ---------------------------------------------------------------------- summaries and files
def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float('nan'), float('nan')
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


def summarize(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per configuration: final/mean accuracy and times as mean and std over its runs.

    The std is the sample standard deviation (n - 1); 0 for a single run.
    """
    by_name: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run['name'], []).append(run)
    summary = {}
    for name, group in by_name.items():
        final = _mean_std([r['final_accuracy'] for r in group])
        mean = _mean_std([r['mean_accuracy'] for r in group])
        train = _mean_std([r['total_train_seconds'] for r in group])
        wall = _mean_std([r['wall_seconds'] for r in group])
        summary[name] = {
            'runs': len(group), 'sources': [r['source'].get('name', '') for r in group],
            'final_accuracy_mean': round(final[0], 4), 'final_accuracy_std': round(final[1], 4),
            'final_accuracies': [r['final_accuracy'] for r in group],
            'mean_accuracy_mean': round(mean[0], 4), 'mean_accuracy_std': round(mean[1], 4),
            'train_seconds_mean': round(train[0], 2), 'train_seconds_std': round(train[1], 2),
            'wall_seconds_mean': round(wall[0], 2), 'wall_seconds_std': round(wall[1], 2),
        }
    return summary


def results_document(runs: Sequence[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None
                     ) -> Dict[str, Any]:
    """Build the results file's content.

    Top level: ``final_accuracy`` and ``mean_accuracy`` (percent) and ``total_time_s`` of the
    first configuration (averaged over its runs when there are several sources), ``summary``
    per configuration and every run in ``runs``.
    """
    summary = summarize(runs)
    first = summary[runs[0]['name']] if runs else {}
    first_runs = [r for r in runs if runs and r['name'] == runs[0]['name']]
    document = {
        'format': RESULTS_FORMAT, 'version': RESULTS_VERSION,
        'final_accuracy': first.get('final_accuracy_mean', float('nan')),
        'mean_accuracy': first.get('mean_accuracy_mean', float('nan')),
        'total_time_s': round(sum(r['wall_seconds'] for r in first_runs), 3),
        'accuracy_unit': 'percent',
        'summary': summary,
        'runs': list(runs),
    }
    document.update(extra or {})
    return document


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    return value


def write_results(path, document: Dict[str, Any]) -> Path:
    """Write ``document`` as JSON (NaN as null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + '.tmp')
    with open(temporary, 'w', encoding='utf-8') as handle:
        json.dump(_json_safe(document), handle, indent=1)
        handle.write('\n')
    temporary.replace(path)
    return path


def _curve(run: Dict[str, Any]) -> Tuple[List[int], List[float]]:
    points = [(b['batch'], b['accuracy']) for b in run['batches']
              if b.get('accuracy') is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_results(runs: Iterable[Dict[str, Any]], path, title: str = '') -> Path:
    """PNG of test accuracy vs training batch, one line per configuration.

    Several runs of one configuration (e.g. runs 0-4 of a scenario) are drawn as their mean
    with a band of one standard deviation, when they were tested at the same batches.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    by_name: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run['name'], []).append(run)
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=110)
    styles = ('-', '--', ':', '-.')
    for number, (name, group) in enumerate(by_name.items()):
        curves = [_curve(r) for r in group]
        finals = _mean_std([r['final_accuracy'] for r in group])
        label = f'{name}: final {finals[0]:.1f}%'
        if len(group) > 1:
            label += f' ± {finals[1]:.1f} ({len(group)} runs)'
        style = dict(linestyle=styles[number % len(styles)], linewidth=1.4,
                     marker='o' if max(len(c[0]) for c in curves) <= 30 else None,
                     markersize=4)
        same = all(c[0] == curves[0][0] for c in curves)
        if len(group) > 1 and same:
            values = np.array([c[1] for c in curves], dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
            line, = axes.plot(curves[0][0], mean, label=label, **style)
            axes.fill_between(curves[0][0], mean - std, mean + std, alpha=0.2,
                              color=line.get_color())
        else:
            color = None
            for index, (x, y) in enumerate(curves):
                line, = axes.plot(x, y, label=label if index == 0 else None, color=color,
                                  **style)
                color = line.get_color()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel('training batch')
    axes.set_ylabel('test accuracy (%)')
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    axes.legend(loc='lower right', fontsize=8)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
