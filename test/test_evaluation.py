"""Offline evaluator: the node's learning path, determinism, latent sharing, files and CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.errors import ConfigError, InputError
from ros2_latent_replay.core.evaluation import LatentCache, ScenarioSource, compare, evaluate, \
    label_runs, learner_values_from_yaml, load_config, parse_override, plot_results, \
    results_document, summarize, write_results
from ros2_latent_replay.core.host_info import INT8_CPU_FLAGS
from ros2_latent_replay.core.learner import ContinualLearner
from ros2_latent_replay.core.scenario import read_scenario
from ros2_latent_replay.evaluation import eval_cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / 'shared' / 'data'
RUN0 = DATA / 'coil100' / 'NIC_coil' / 'run0'
IMAGES = DATA / 'coil100' / 'images'
# a quick configuration: cut near the top, one epoch, one thread (the method is unchanged);
# lr_incremental is raised so that new classes show up in the accuracy within 3 batches
FAST = dict(latent_layer='blocks.6.0', epochs=1, threads=1, lr_incremental=1e-3)
TIMING = ('encode_seconds', 'train_seconds', 'learn_seconds', 'eval_seconds', 'wall_seconds')

torch.set_num_threads(1)


class CountingSource(ScenarioSource):
    """A scenario source that counts how often images are decoded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads = 0

    def load_batch(self, index):
        """Count, then load a batch."""
        self.loads += 1
        return super().load_batch(index)

    def load_test(self):
        """Count, then load the test set."""
        self.loads += 1
        return super().load_test()


@pytest.fixture(scope='module')
def scenario():
    if not RUN0.is_dir() or not IMAGES.is_dir():
        pytest.skip(f'NIC_coil not found at {RUN0} (../shared/data absent)')
    return read_scenario(RUN0, IMAGES, max_batches=3)


def _without_timing(run):
    return [{k: v for k, v in b.items() if k not in TIMING} for b in run['batches']]


@pytest.fixture(scope='module')
def default_run(scenario):
    return evaluate(ScenarioSource(scenario, test_stride=8), LearnerConfig(**FAST),
                    progress=False)


def test_a_run_records_every_batch(default_run, scenario):
    run = default_run
    assert [b['batch'] for b in run['batches']] == [0, 1, 2]
    assert [b['frames'] for b in run['batches']] == [len(b) for b in scenario.batches]
    assert [b['known_classes'] for b in run['batches']] == [10, 11, 12]
    # fill-then-replace memory of 1,500 slots: everything seen so far is kept
    assert [b['replay_fill'] for b in run['batches']] == [180, 198, 216]
    assert all(b['learned'] and b['dropped'] == 0 for b in run['batches'])
    accuracies = [b['accuracy'] for b in run['batches']]
    assert all(0.0 <= a <= 100.0 for a in accuracies)
    # 110 test frames of 49 objects; 10 known after batch 0, then more
    assert 5.0 < accuracies[0] <= 10 / 49 * 100 + 5
    assert run['final_accuracy'] == accuracies[-1]
    assert run['mean_accuracy'] == pytest.approx(np.mean(accuracies), abs=1e-3)
    assert run['test_frames'] == 110 and run['config'] == LearnerConfig(**FAST).to_dict()
    assert run['total_train_seconds'] > 0 and run['wall_seconds'] >= run['total_train_seconds']


def test_runs_are_deterministic_for_a_seed(default_run, scenario):
    again = evaluate(ScenarioSource(scenario, test_stride=8), LearnerConfig(**FAST),
                     progress=False)
    assert _without_timing(again) == _without_timing(default_run)
    other_seed = evaluate(ScenarioSource(scenario, test_stride=8),
                          LearnerConfig(**FAST, seed=5), progress=False, eval_every=3)
    assert [b['loss'] for b in other_seed['batches']] != \
        [b['loss'] for b in default_run['batches']]
    # eval_every=3: tested only after the last batch
    assert ['accuracy' in b for b in other_seed['batches']] == [False, False, True]


class StopAt(ScenarioSource):
    """A scenario source whose ``load_batch(index)`` is interrupted (a Ctrl-C mid-stream)."""

    def __init__(self, *args, stop_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def load_batch(self, index):
        """Stop at batch ``stop_at``, load the others."""
        if index == self.stop_at:
            raise KeyboardInterrupt
        return super().load_batch(index)


@pytest.mark.parametrize('where', ['before the state is saved', 'during the next batch'])
def test_an_interrupted_run_resumes_with_the_same_results(default_run, scenario, tmp_path,
                                                          where):
    state = tmp_path / 'progress.pt'
    seen = []

    def record(batch):
        seen.append(batch)
        if where == 'before the state is saved' and len(seen) == 2:
            raise KeyboardInterrupt

    source = StopAt(scenario, test_stride=8, stop_at=2 if where == 'during the next batch'
                    else None)
    with pytest.raises(KeyboardInterrupt):
        evaluate(source, LearnerConfig(**FAST), progress=False, on_batch=record,
                 state_file=state)
    # two records; the state holds one step (stopped between the record and the state) or
    # two (stopped while loading the third batch): both resume to the uninterrupted results
    assert len(seen) == 2
    resumed = evaluate(ScenarioSource(scenario, test_stride=8), LearnerConfig(**FAST),
                       progress=False, state_file=state, resume={'batches': seen})
    assert resumed['resumed'] and _without_timing(resumed) == _without_timing(default_run)
    assert resumed['final_accuracy'] == default_run['final_accuracy']
    if where == 'before the state is saved':
        with pytest.raises(InputError, match='holds 3 steps but the progress file 1'):
            evaluate(ScenarioSource(scenario, test_stride=8), LearnerConfig(**FAST),
                     progress=False, state_file=state, resume={'batches': seen[:1]})


def test_the_offline_path_is_the_nodes_path(default_run, scenario):
    """observe(frames) per label + learn + predict(frames), as the node runs them."""
    config = LearnerConfig(**FAST)
    torch.manual_seed(config.seed)
    source = ScenarioSource(scenario, test_stride=8)
    losses = []
    with ContinualLearner(config) as learner:
        for index in range(source.num_batches):
            frames, names = source.load_batch(index)
            for label, start, end in label_runs(names):
                for part in range(start, end, 8):        # the node's observe_batch_size
                    learner.observe(frames[part:min(part + 8, end)], label)
            losses.append(learner.learn()['loss'])
        frames, truth = source.load_test()
        predicted = [learner.predict(frames[i:i + 1])[0]['label'] for i in range(len(truth))]
    accuracy = 100.0 * np.mean([p == t for p, t in zip(predicted, truth)])
    assert losses == pytest.approx([b['loss'] for b in default_run['batches']], rel=1e-3)
    assert accuracy == pytest.approx(default_run['final_accuracy'], abs=1.0)


def test_configurations_share_the_encoded_latents(scenario):
    source = CountingSource(scenario, test_stride=8)
    configs = [('default', LearnerConfig(**FAST)),
               ('naive', LearnerConfig(**FAST, strategy='naive')),
               ('other cut', LearnerConfig(**{**FAST, 'latent_layer': 'blocks.5.3'}))]
    seen = []
    runs = compare([source], configs[:2], progress=False, on_run=seen.append)
    assert source.loads == 4          # 3 batches + the test set, decoded once for both
    assert [r['name'] for r in runs] == ['default', 'naive'] and seen == runs
    assert runs[1]['replay_fill'] == 0 and runs[1]['config']['strategy'] == 'naive'
    assert all(b['encode_seconds'] < 0.05 for b in runs[1]['batches'])
    alone = CountingSource(scenario, test_stride=8, name='alone')
    cache = LatentCache(keep_batches=False)
    evaluate(alone, configs[0][1], cache=cache, progress=False)
    assert len(cache) == 1            # one configuration: only the test latents are kept
    assert LatentCache.key(configs[0][1]) == LatentCache.key(configs[1][1])
    assert LatentCache.key(configs[0][1]) != LatentCache.key(configs[2][1])


def test_summary_results_file_and_plot(default_run, tmp_path):
    twin = json.loads(json.dumps(default_run))
    twin['final_accuracy'] = default_run['final_accuracy'] + 2.0
    naive = json.loads(json.dumps(default_run))
    naive['name'] = 'naive'
    summary = summarize([default_run, twin, naive])
    assert summary['default']['runs'] == 2
    assert summary['default']['final_accuracy_mean'] == pytest.approx(
        default_run['final_accuracy'] + 1.0, abs=1e-3)
    assert summary['default']['final_accuracy_std'] == pytest.approx(np.sqrt(2.0), abs=1e-3)
    assert summary['naive']['final_accuracy_std'] == 0.0
    document = results_document([default_run, twin, naive])
    assert document['final_accuracy'] == summary['default']['final_accuracy_mean']
    path = write_results(tmp_path / 'r' / 'results.json', document)
    assert json.loads(path.read_text())['summary']['naive']['runs'] == 1
    png = plot_results([default_run, twin, naive], tmp_path / 'r' / 'accuracy.png', title='t')
    from PIL import Image
    with Image.open(png) as image:
        assert image.format == 'PNG' and image.size[0] > 400


def test_the_nodes_params_file_gives_the_product_defaults():
    values, ignored = learner_values_from_yaml(REPO / 'config' / 'params.yaml')
    assert LearnerConfig.from_dict(values) == LearnerConfig()
    assert 'state_file' in ignored and 'autosave' in ignored


def test_params_files_overrides_and_errors(tmp_path):
    node_file = tmp_path / 'node.yaml'
    node_file.write_text('latent_replay_node:\n  ros__parameters:\n    epochs: 2\n'
                         '    lr_initial: 1e-3\n    strategy: naive\n    top_k: 5\n')
    config, ignored = load_config(node_file, {'seed': 3})
    assert (config.epochs, config.lr_initial, config.strategy, config.seed) == \
        (2, 1e-3, 'naive', 3)
    assert ignored == ['top_k']
    plain = tmp_path / 'plain.yaml'
    plain.write_text('replay_size: 500\n')
    assert load_config(plain)[0].replay_size == 500
    bad = tmp_path / 'bad.yaml'
    bad.write_text('/**:\n  ros__parameters:\n    strategy: sometimes\n')
    with pytest.raises(ConfigError, match='strategy'):
        load_config(bad)
    bad.write_text('epochs: [1\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(bad)
    with pytest.raises(ConfigError, match='cannot read'):
        load_config(tmp_path / 'missing.yaml')
    assert parse_override('epochs=3') == ('epochs', 3)
    assert parse_override('random_init=true') == ('random_init', True)
    with pytest.raises(ConfigError, match='unknown learner setting'):
        parse_override('epoch=3')
    with pytest.raises(ConfigError, match='expected a int'):
        parse_override('epochs=many')


def test_cli_writes_results_and_plot(scenario, tmp_path, capsys):
    config = tmp_path / 'fast.yaml'
    config.write_text('/**:\n  ros__parameters:\n' +
                      ''.join(f'    {k}: {v}\n' for k, v in FAST.items()) +
                      '    state_file: /nowhere/state.pt\n')
    out = tmp_path / 'out'
    code = eval_cli.main(['--scenario', str(RUN0), '--images', str(IMAGES), '--out', str(out),
                          '--config', str(config), '--strategy', 'ar1_free',
                          '--strategy', 'naive', '--max-batches', '2', '--test-stride', '16',
                          '--seed', '1', '--no-progress'])
    assert code == 0
    document = json.loads((out / 'results.json').read_text())
    assert set(document['summary']) == {'fast', 'naive'}
    assert 0.0 <= document['final_accuracy'] <= 100.0
    assert document['final_accuracy'] == document['runs'][0]['final_accuracy']
    assert document['ignored_config_keys']['fast'] == ['state_file']
    host = document['host']      # numbers depend on the CPU: the file says which one
    assert host['cores'] >= 1 and host['cpu_model'] and host['torch'] == torch.__version__
    assert set(host['cpu_int8_flags']) <= set(INT8_CPU_FLAGS)
    assert all(r['seed'] == 1 and len(r['batches']) == 2 for r in document['runs'])
    assert (out / 'accuracy.png').stat().st_size > 10_000
    assert not (out / 'progress.json').exists()     # only while a run is in progress
    assert 'final_accuracy' in capsys.readouterr().out
    first = document['runs']
    assert eval_cli.main(['--scenario', str(RUN0), '--images', str(IMAGES), '--out', str(out),
                          '--config', str(config), '--strategy', 'ar1_free',
                          '--strategy', 'naive', '--max-batches', '2', '--test-stride', '16',
                          '--seed', '1', '--no-progress', '--resume']) == 0
    assert json.loads((out / 'results.json').read_text())['runs'] == first   # nothing rerun
    merged = tmp_path / 'merged'
    assert eval_cli.main(['--merge', str(out / 'results.json'), str(out / 'results.json'),
                          '--out', str(merged)]) == 0
    assert json.loads((merged / 'results.json').read_text())['summary']['fast']['runs'] == 2


def test_cli_resumes_a_run_stopped_while_its_state_was_written(scenario, tmp_path,
                                                               monkeypatch):
    args = ['--scenario', str(RUN0), '--images', str(IMAGES), '--max-batches', '3',
            '--test-stride', '16', '--no-progress'] + \
        [a for k, v in FAST.items() for a in ('--set', f'{k}={v}')]
    assert eval_cli.main(args + ['--out', str(tmp_path / 'whole')]) == 0
    whole = json.loads((tmp_path / 'whole' / 'results.json').read_text())['runs'][0]
    out = tmp_path / 'stopped'
    save, calls = ContinualLearner.save, []

    def stop_on_the_second_save(learner, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        save(learner, path)

    monkeypatch.setattr(ContinualLearner, 'save', stop_on_the_second_save)
    assert eval_cli.main(args + ['--out', str(out)]) == 130
    monkeypatch.setattr(ContinualLearner, 'save', save)
    progress = json.loads((out / 'progress.json').read_text())
    assert [b['batch'] for b in progress['batches']] == [0, 1]     # batch 1 recorded ...
    assert (out / 'progress.pt').exists() and not (out / 'results.json').exists()
    assert eval_cli.main(args + ['--out', str(out), '--resume']) == 0   # ... and learned again
    resumed = json.loads((out / 'results.json').read_text())['runs'][0]
    assert [b['batch'] for b in resumed['batches']] == [0, 1, 2] and resumed['resumed']
    assert _without_timing(resumed) == _without_timing(whole)
    assert not (out / 'progress.json').exists() and not (out / 'progress.pt').exists()


def test_cli_errors_are_messages(tmp_path, capsys):
    assert eval_cli.main(['--scenario', str(tmp_path), '--out', str(tmp_path)]) == 2
    assert '--images' in capsys.readouterr().err
    assert eval_cli.main(['--scenario', str(tmp_path / 'no'), '--images', str(tmp_path),
                          '--out', str(tmp_path)]) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert eval_cli.main(['--out', str(tmp_path)]) == 2
    assert 'nothing to evaluate' in capsys.readouterr().err


@pytest.mark.parametrize('module', ['eval_cli', 'bag_writer', 'live'])
def test_every_command_has_help(module):
    result = subprocess.run([sys.executable, '-m', f'ros2_latent_replay.evaluation.{module}',
                             '--help'], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and 'usage: latent-replay-' in result.stdout


def test_setup_declares_the_console_scripts():
    text = (REPO / 'setup.py').read_text()
    for line in ('latent-replay-eval = ros2_latent_replay.evaluation.eval_cli:main',
                 'latent-replay-write-bag = ros2_latent_replay.evaluation.bag_writer:main',
                 'latent-replay-play-bag = ros2_latent_replay.evaluation.live:main'):
        assert line in text
