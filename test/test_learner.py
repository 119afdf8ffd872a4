"""The continual learner end to end on real photographs (no ROS)."""

import threading

import numpy as np
import pytest
import torch

from real_images import skimage_views
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.errors import (BusyError, CheckpointError, ClassLimitError,
                                            ConfigError, EmptyEpisodeError, InputError,
                                            NonFiniteError, NotTrainedError)
from ros2_latent_replay.core.frozen_runtime import FrozenLowerRuntime
from ros2_latent_replay.core.learner import ContinualLearner
from ros2_latent_replay.core.lower_quantization import cosine_similarities

OBJECTS = ('chelsea', 'coffee', 'rocket')


def _config(**overrides):
    base = dict(replay_size=200, epochs=2, threads=1, lower_runtime='torch')
    base.update(overrides)
    return LearnerConfig.from_dict(base)


@pytest.fixture(scope='module')
def views():
    """Training and held-out views of three real photos."""
    return {name: (skimage_views(name, 24, seed=1), skimage_views(name, 8, seed=2))
            for name in OBJECTS}


def _teach(learner, views, names=OBJECTS):
    stats = []
    for name in names:
        learner.observe(views[name][0], name)
        stats.append(learner.learn())
    return stats


def _accuracy(learner, views, names=OBJECTS):
    hits = total = 0
    for name in names:
        preds = learner.predict(views[name][1])
        hits += sum(p['label'] == name for p in preds)
        total += len(preds)
    return hits / total


@pytest.fixture()
def learner():
    with ContinualLearner(_config()) as lrn:
        yield lrn


def test_teach_three_objects_one_at_a_time_and_recognise_held_out_views(learner, views):
    with pytest.raises(NotTrainedError):
        learner.predict(views['chelsea'][1])
    stats = _teach(learner, views)
    assert [s['new_classes'] for s in stats] == [['chelsea'], ['coffee'], ['rocket']]
    assert learner.known_classes == list(OBJECTS)
    assert stats[-1]['replay_fill'] == learner.replay_fill > 0
    assert stats[1]['replay_per_minibatch'] > 0  # replay mixed in after the first step
    assert _accuracy(learner, views) >= 0.8
    pred = learner.predict(views['coffee'][1][:1], top_k=5)[0]
    assert len(pred['top_k']) == 3  # only known classes
    assert sum(p for _, p in pred['top_k']) == pytest.approx(1.0, abs=1e-4)
    assert pred['top_k'][0] == [pred['label'], pred['confidence']]


def test_bad_input_is_refused_and_changes_nothing(learner, views):
    with pytest.raises(EmptyEpisodeError):
        learner.learn()
    for bad in (np.zeros((2, 64, 64, 3), dtype=np.float32), np.zeros((2, 64, 64, 4), np.uint8),
                np.zeros((64, 64, 3), np.uint8), [], np.zeros((1, 4, 4, 3), np.uint8), 'img'):
        with pytest.raises(InputError):
            learner.observe(bad, 'thing')
    with pytest.raises(InputError):
        learner.observe(views['coffee'][0][:2], '   ')
    assert learner.episode_size == 0
    # mono and odd-sized frames are accepted (replicated / centre-cropped and resized)
    assert learner.observe([np.full((90, 300), 7, np.uint8)], 'mono') == 1
    assert learner.observe([views['coffee'][0][0][:100, :130]], 'mono') == 1
    assert learner.episode_size == 2
    learner.clear_episode()
    assert learner.episode_size == 0


def test_episode_cap_drops_and_counts():
    with ContinualLearner(_config(max_frames_per_episode=5)) as lrn:
        frames = skimage_views('coffee', 8)
        assert lrn.observe(frames, 'coffee') == 5
        assert lrn.observe(frames[:2], 'coffee') == 0
        assert lrn.episode_size == 5 and lrn.episode_dropped == 5
        assert lrn.learn()['frames'] == 5
        assert lrn.episode_dropped == 0


def test_class_limit_is_a_clear_error(views):
    with ContinualLearner(_config(max_classes=2)) as lrn:
        _teach(lrn, views, names=OBJECTS[:2])
        with pytest.raises(ClassLimitError, match='max_classes is 2'):
            lrn.observe(views['rocket'][0], 'rocket')
        lrn.observe(views['chelsea'][0][:4], 'chelsea')  # known classes still teachable
        assert lrn.learn()['known_classes'] == 2


def test_diverging_step_leaves_the_model_unchanged(views):
    with ContinualLearner(_config(lr_incremental=1e5, momentum=0.0)) as lrn:
        _teach(lrn, views, names=OBJECTS[:2])
        probe = views['chelsea'][1]
        before = torch.tensor([p['top_k'][0][1] for p in lrn.predict(probe)])
        fill = lrn.replay_fill
        state = {k: v.clone() for k, v in lrn.state_dict()['upper'].items()}
        lrn.observe(views['rocket'][0], 'rocket')
        with pytest.raises(NonFiniteError):
            lrn.learn()
        assert lrn.known_classes == list(OBJECTS[:2])
        assert lrn.replay_fill == fill and lrn.steps == 2
        after = torch.tensor([p['top_k'][0][1] for p in lrn.predict(probe)])
        assert torch.equal(before, after)
        for key, value in lrn.state_dict()['upper'].items():
            assert torch.equal(value, state[key]), key


def test_second_learn_while_one_runs_is_busy_and_predict_keeps_answering(views):
    with ContinualLearner(_config(epochs=40)) as lrn:
        _teach(lrn, views, names=OBJECTS[:1])
        lrn.observe(views['coffee'][0], 'coffee')
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.setdefault('stats', lrn.learn()))
        worker.start()
        try:
            deadline = threading.Event()
            while not lrn.stats()['learning'] and worker.is_alive():
                deadline.wait(0.01)
            lrn.observe(views['rocket'][0][:3], 'rocket')
            with pytest.raises(BusyError):
                lrn.learn()
            preds = lrn.predict(views['chelsea'][1][:2])  # served by the previous model
            assert all(p['label'] == 'chelsea' for p in preds)
        finally:
            worker.join(timeout=300)
        assert outcome['stats']['classes'] == ['coffee']
        assert lrn.episode_size == 3  # frames observed during learning wait for the next step


def test_save_load_round_trip_and_refusals(tmp_path, views):
    path = str(tmp_path / 'state.pt')
    with ContinualLearner(_config()) as first:
        _teach(first, views)
        first.save(path)
        probe = [frame for v in views.values() for frame in v[1]]
        expected = first.predict(probe)
        mem_before = first.replay_memory.read_all()
    with ContinualLearner(_config()) as second:
        second.load(path)
        assert second.known_classes == list(OBJECTS) and second.steps == 3
        assert second.predict(probe) == expected
        latents, labels = second.replay_memory.read_all()
        assert torch.equal(latents, mem_before[0]) and np.array_equal(labels, mem_before[1])
        # broken files are refused and the loaded state stays intact
        blob = open(path, 'rb').read()
        broken = tmp_path / 'broken.pt'
        broken.write_bytes(blob[:len(blob) // 3])
        with pytest.raises(CheckpointError):
            second.load(str(broken))
        assert second.predict(probe) == expected
    with ContinualLearner(_config(latent_layer='blocks.6.0')) as other_cut:
        with pytest.raises(CheckpointError, match='cut'):
            other_cut.load(path)
        assert other_cut.known_classes == [] and other_cut.steps == 0


def test_reset_forgets_everything(learner, views):
    _teach(learner, views, names=OBJECTS[:2])
    learner.reset()
    assert learner.known_classes == [] and learner.steps == 0 and learner.replay_fill == 0
    with pytest.raises(NotTrainedError):
        learner.predict(views['chelsea'][1])
    _teach(learner, views, names=OBJECTS[2:])
    assert learner.known_classes == ['rocket']


@pytest.mark.parametrize('strategy', ['ar1', 'cwr', 'naive'])
def test_other_strategies_learn(strategy, views):
    with ContinualLearner(_config(strategy=strategy, si_lambda=1e4)) as lrn:
        stats = _teach(lrn, views)
        assert lrn.known_classes == list(OBJECTS)
        if strategy == 'naive':
            assert lrn.replay_capacity == 0 and stats[-1]['replay_per_minibatch'] == 0
            assert lrn.predict(views['rocket'][1][:1])[0]['label'] == 'rocket'
        else:
            assert _accuracy(lrn, views) >= 0.6
        if strategy == 'ar1':
            si = lrn.state_dict()['upper']
            penalties = [v for k, v in si.items() if k.startswith('si.penalty__')]
            assert penalties and any(float(p.max()) > 0 for p in penalties)


def test_onnx_runtime_learner_matches_torch_learner(views):
    frames = views['coffee'][0][:6]
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='float32')) as fast, \
            ContinualLearner(_config(lower_runtime='torch')) as eager:
        a, b = fast.encode(frames), eager.encode(frames)
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 1e-3 * scale


def test_int8_lower_part_learns_round_trips_and_keeps_its_precision(tmp_path, views):
    """An int8 learner recognises held-out views; its checkpoint loads only into int8."""
    with pytest.raises(ConfigError, match='int8'):
        _config(lower_precision='int8')                    # lower_runtime='torch'
    with pytest.raises(ConfigError, match='int8'):
        _config(lower_precision='int8', lower_runtime='auto', lower_mode='slowed',
                lower_lr_multiplier=0.1)
    path = str(tmp_path / 'int8.pt')
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='int8')) as small:
        assert small.lower_backend == 'onnxruntime'
        _teach(small, views)
        assert _accuracy(small, views) >= 0.8
        probe = [frame for v in views.values() for frame in v[1]]
        expected = small.predict(probe)
        small.save(path)
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='int8')) as again:
        again.load(path)
        assert again.predict(probe) == expected
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='float32')) as float32:
        with pytest.raises(CheckpointError, match="set lower_precision to 'int8'"):
            float32.load(path)
        assert float32.steps == 0


def test_auto_precision_is_int8_only_for_a_frozen_onnx_lower_part():
    assert LearnerConfig().effective_lower_precision() == 'int8'
    assert _config(lower_runtime='auto').effective_lower_precision() == 'int8'
    assert _config(lower_runtime='onnxruntime').effective_lower_precision() == 'int8'
    assert _config().effective_lower_precision() == 'float32'          # lower_runtime='torch'
    slowed = _config(lower_runtime='auto', lower_mode='slowed', lower_lr_multiplier=0.1)
    assert slowed.effective_lower_precision() == 'float32'
    assert _config(lower_runtime='auto', lower_precision='float32') \
        .effective_lower_precision() == 'float32'


def test_auto_precision_takes_float32_when_the_int8_graph_is_unusable(
        monkeypatch, caplog, tmp_path, views):
    """No int8 graph can pass a check demanding cosine > 1: auto runs float32, and says so."""
    monkeypatch.setattr(FrozenLowerRuntime, 'INT8_MIN_COSINE', 1.01)
    with pytest.raises(ConfigError, match='too far from float32'):
        ContinualLearner(_config(lower_runtime='auto', lower_precision='int8'))
    path = str(tmp_path / 'fallback.pt')
    with caplog.at_level('WARNING'):
        with ContinualLearner(_config(lower_runtime='auto')) as auto:
            assert auto.lower_precision == 'float32'
            assert auto.stats()['lower_precision'] == 'float32'
            auto.observe(views['coffee'][0][:6], 'coffee')
            auto.learn()
            auto.save(path)
    assert 'running the lower part in float32' in caplog.text
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='float32')) as same:
        same.load(path)
        assert same.known_classes == ['coffee']


def test_state_without_a_precision_is_float32(tmp_path, views):
    """Files written before lower_precision existed hold float32 latents: never int8 ones."""
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='float32')) as old:
        old.observe(views['coffee'][0][:6], 'coffee')
        old.learn()
        state = old.state_dict()
    del state['config']['lower_precision']
    with ContinualLearner(_config(lower_runtime='auto')) as auto:
        assert auto.stats()['lower_precision'] == 'int8'
        with pytest.raises(CheckpointError, match="set lower_precision to 'float32'"):
            auto.load_state_dict(state)
        assert auto.steps == 0
    with ContinualLearner(_config(lower_runtime='auto', lower_precision='float32')) as same:
        same.load_state_dict(state)
        assert same.known_classes == ['coffee']


def test_slowed_lower_part_trains_slowly_and_round_trips(tmp_path, views):
    cfg = _config(lower_mode='slowed', lower_lr_multiplier=0.1, lower_statistics='drift')
    with ContinualLearner(cfg) as lrn:
        assert lrn.lower_backend == 'torch'
        before = {k: v.clone() for k, v in lrn.state_dict()['lower'].items()}
        stats = _teach(lrn, views)
        assert stats[-1]['replay_fill'] > 0
        after = lrn.state_dict()['lower']
        moved = [k for k, v in after.items() if v.is_floating_point()
                 and not torch.equal(v, before[k])]
        assert any(k.endswith('weight') for k in moved)  # lower weights train
        assert any(k.endswith('running_mean') for k in moved)  # BRN statistics drift
        assert _accuracy(lrn, views) >= 0.6
        path = str(tmp_path / 'slowed.pt')
        lrn.save(path)
        probe = views['rocket'][1]
        expected = lrn.predict(probe)
    with ContinualLearner(cfg) as other:
        other.load(path)
        assert other.predict(probe) == expected


def test_slowed_lower_part_by_default_trains_only_its_weights(views):
    """``lower_mode: slowed`` alone: lower weights move, its BRN running statistics do not."""
    cfg = _config(lower_mode='slowed')
    with ContinualLearner(cfg) as lrn:
        before = {k: v.clone() for k, v in lrn.state_dict()['lower'].items()}
        _teach(lrn, views)
        after = lrn.state_dict()['lower']
        moved = {k for k, v in after.items() if v.is_floating_point()
                 and not torch.equal(v, before[k])}
        assert any(k.endswith('weight') for k in moved)
        statistics = [k for k in after if k.endswith(('running_mean', 'running_var'))]
        assert statistics and not moved.intersection(statistics)
        assert _accuracy(lrn, views) >= 0.6
    with pytest.raises(ConfigError, match='changes nothing in the lower part'):
        _config(lower_mode='slowed', lower_lr_multiplier=0.0, lower_statistics='fixed')
    with pytest.raises(ConfigError, match='lower_statistics'):
        _config(lower_statistics='frozen')


def test_slowed_lower_part_serves_from_a_graph_of_its_current_weights(views):
    """A lower part that trains gets a fresh ONNX Runtime graph after each step and reset."""
    frames = views['coffee'][1]
    # a large learning rate for the lower part, so that its latents visibly move
    moving = dict(lower_mode='slowed', lower_lr_multiplier=1.0, lr_initial=1e-2,
                  lr_incremental=1e-2, slowed_lower_precision='float32')
    with ContinualLearner(_config(lower_runtime='auto', **moving)) as fast, \
            ContinualLearner(_config(**moving)) as eager:
        assert (fast.lower_backend, eager.lower_backend) == ('onnxruntime', 'torch')
        pretrained = fast.encode(frames)
        _teach(fast, views, OBJECTS[:2])
        assert fast.lower_backend == 'onnxruntime'
        eager.load_state_dict(fast.state_dict())
        expected, served = eager.encode(frames), fast.encode(frames)
        scale = float(expected.abs().max())
        assert float((served - expected).abs().max()) <= 2e-5 * scale     # 1e-6 measured
        assert float((pretrained - expected).abs().max()) > 1e-3 * scale   # weights moved
        assert [p['label'] for p in fast.predict(frames)] == \
            [p['label'] for p in eager.predict(frames)]
        fast.reset()
        assert fast.lower_backend == 'onnxruntime'
        again = fast.encode(frames)
        assert float((again - pretrained).abs().max()) <= 2e-5 * scale


def test_split_slowed_lower_part_trains_only_the_layers_after_the_split(views):
    """``lower_frozen_until``: the layers up to it never change, the ones after it train."""
    frames = views['coffee'][1]
    moving = dict(lower_mode='slowed', lower_frozen_until='blocks.3.2', lower_lr_multiplier=1.0,
                  lr_initial=1e-2, lr_incremental=1e-2, lower_precision='float32',
                  slowed_lower_precision='float32')
    with ContinualLearner(_config()) as frozen, \
            ContinualLearner(_config(lower_runtime='auto', **moving)) as fast, \
            ContinualLearner(_config(**moving)) as eager:
        assert fast.lower_backend == 'onnxruntime' and eager.lower_backend == 'torch'
        pretrained = frozen.encode(frames)
        scale = float(pretrained.abs().max())
        # before any training, the split network is the frozen one
        assert float((eager.encode(frames) - pretrained).abs().max()) <= 1e-5 * scale
        assert float((fast.encode(frames) - pretrained).abs().max()) <= 2e-5 * scale
        before = {k: v.clone() for k, v in fast.state_dict()['lower'].items()}
        _teach(fast, views, OBJECTS[:2])
        after = fast.state_dict()['lower']
        moved = {k for k, v in after.items() if v.is_floating_point()
                 and not torch.equal(v, before[k])}
        assert any(k.endswith('weight') for k in moved)
        assert all(k.startswith(('blocks.4.', 'blocks.5.')) for k in moved), sorted(moved)[:5]
        # the served graph follows the trained layers: an eager learner agrees with it
        eager.load_state_dict(fast.state_dict())
        expected, served = eager.encode(frames), fast.encode(frames)
        assert float((served - expected).abs().max()) <= 2e-5 * scale
        assert float((pretrained - expected).abs().max()) > 1e-3 * scale   # weights moved
        assert [p['label'] for p in fast.predict(frames)] == \
            [p['label'] for p in eager.predict(frames)]
        fast.reset()
        assert float((fast.encode(frames) - pretrained).abs().max()) <= 2e-5 * scale


def test_split_slowed_lower_part_runs_its_frozen_layers_in_int8_and_round_trips(
        tmp_path, views):
    """By default the frozen layers of a split lower part run int8, like a frozen one."""
    cfg = _config(lower_mode='slowed', lower_frozen_until='blocks.4.2', lower_runtime='auto')
    path = str(tmp_path / 'split.pt')
    probe = views['rocket'][1]
    with ContinualLearner(cfg) as lrn:
        assert lrn.lower_precision == 'int8' and lrn.lower_backend == 'onnxruntime'
        assert lrn.slowed_lower_precision == 'int8'     # and the trained ones predict in int8
        stats = _teach(lrn, views)
        assert stats[-1]['replay_fill'] > 0
        assert _accuracy(lrn, views) >= 0.6
        lrn.save(path)
        expected = lrn.predict(probe)
    with ContinualLearner(cfg) as other:
        other.load(path)
        assert other.predict(probe) == expected
    for different in (dict(lower_frozen_until='blocks.3.2'), dict(lower_frozen_until='')):
        with ContinualLearner(_config(**dict(cfg.to_dict(), **different))) as other:
            with pytest.raises(CheckpointError, match='lower_frozen_until'):
                other.load(path)


def test_slowed_lower_part_can_predict_in_int8_and_answers_the_same_after_a_restart(
        tmp_path, views, monkeypatch, caplog):
    """``slowed_lower_precision: int8``: predictions quantized per step, training float32."""
    cfg = _config(lower_mode='slowed', lower_frozen_until='blocks.4.2', lower_runtime='auto',
                  slowed_lower_precision='int8')
    exact_cfg = _config(**dict(cfg.to_dict(), slowed_lower_precision='float32'))
    frames = [frame for name in OBJECTS for frame in views[name][1]]
    path = str(tmp_path / 'int8.pt')
    with ContinualLearner(cfg) as fast, ContinualLearner(exact_cfg) as exact:
        assert (fast.slowed_lower_precision, exact.slowed_lower_precision) == ('int8', 'float32')
        _teach(fast, views)
        assert fast.stats()['slowed_lower_precision'] == 'int8'
        assert fast.lower_precision == 'int8'          # the frozen layers, as before
        assert _accuracy(fast, views) >= 0.6
        fast.save(path)
        exact.load(path)        # how predictions run is not part of the state file
        served, expected = fast.encode(frames), exact.encode(frames)
        cosine = cosine_similarities(served.numpy(), expected.numpy())
        assert cosine.min() >= 0.95, cosine
        scale = float(expected.abs().max())
        assert float((served - expected).abs().max()) > 1e-3 * scale     # really int8
        answers = fast.predict(frames)
        same = sum(a['label'] == b['label'] for a, b in zip(answers, exact.predict(frames)))
        assert same >= len(frames) - 2, same
    with ContinualLearner(cfg) as other:
        other.load(path)
        assert other.predict(frames) == answers        # the same graph is quantized again
    monkeypatch.setattr(FrozenLowerRuntime, 'INT8_MIN_COSINE', 1.01)   # no graph passes
    with caplog.at_level('WARNING', logger='ros2_latent_replay.core.learner'):
        with ContinualLearner(cfg) as checked:
            assert checked.slowed_lower_precision == 'float32'
            assert checked.lower_backend == 'onnxruntime'
    assert 'predicts in float32 this time' in caplog.text
    # auto: int8 for a split slowed part only (the whole part lost more accuracy in int8)
    for split, expected in (('blocks.4.2', 'int8'), ('', 'float32')):
        auto = dict(cfg.to_dict(), slowed_lower_precision='auto', lower_frozen_until=split)
        assert LearnerConfig.from_dict(auto).effective_slowed_lower_precision() == expected
    for wrong in (dict(lower_mode='frozen'), dict(lower_runtime='torch')):
        with pytest.raises(ConfigError, match="slowed_lower_precision='int8' needs"):
            _config(**dict(cfg.to_dict(), lower_frozen_until='', lower_precision='auto',
                           **wrong))


def test_split_of_the_lower_part_is_checked():
    """A split needs the slowed mode and a layer below the latent layer."""
    with pytest.raises(ConfigError, match="needs lower_mode='slowed'"):
        _config(lower_frozen_until='blocks.3.2')
    with pytest.raises(ConfigError, match='must be a layer name'):
        _config(lower_mode='slowed', lower_frozen_until=3)
    for layer in ('blocks.5.3', 'blocks.6.0', 'nonsense'):   # the cut, above it, unknown
        with pytest.raises(ConfigError, match='cannot split the lower part after'):
            ContinualLearner(_config(lower_mode='slowed', lower_frozen_until=layer))
    # int8 for the frozen layers only when some are frozen
    _config(lower_mode='slowed', lower_frozen_until='blocks.3.2', lower_runtime='auto',
            lower_precision='int8')
    with pytest.raises(ConfigError, match="lower_precision='int8' needs a frozen"):
        _config(lower_mode='slowed', lower_runtime='auto', lower_precision='int8')


def test_predictions_run_the_upper_part_in_onnx_runtime_and_match_eager(tmp_path, views):
    """After each learn the new upper part serves predictions from ONNX Runtime."""
    state = tmp_path / 'state.pt'
    frames = [frame for name in OBJECTS for frame in views[name][1]]
    with ContinualLearner(_config(upper_precision='float32')) as fast:
        assert fast.upper_backend == 'torch'          # nothing learned yet
        _teach(fast, views, OBJECTS[:2])
        assert fast.upper_backend == 'onnxruntime'
        two = fast.probabilities(fast.encode(frames))
        assert two.shape == (len(frames), 2)
        _teach(fast, views, OBJECTS[2:])
        latents = fast.encode(frames)
        got = fast.probabilities(latents)
        assert got.shape == (len(frames), 3)          # the runtime follows the new model
        fast.save(str(state))
        answers = fast.predict(frames)
        with ContinualLearner(_config(upper_runtime='torch')) as eager:
            eager.load(str(state))
            assert eager.upper_backend == 'torch'
            expected = eager.probabilities(latents)
            assert float((got - expected).abs().max()) <= 1e-4
            assert [a['label'] for a in eager.predict(frames)] == [a['label'] for a in answers]
        with ContinualLearner(_config(upper_precision='float32')) as loaded:
            loaded.load(str(state))
            assert loaded.upper_backend == 'onnxruntime'
            assert float((loaded.probabilities(latents) - expected).abs().max()) <= 1e-4
            loaded.reset()
            assert loaded.upper_backend == 'torch'
        with pytest.raises(InputError):
            fast.probabilities(latents[:0])


def test_int8_upper_part_serves_predictions_close_to_float32_and_saves_float32(
        tmp_path, views):
    """The int8 upper part (the default) changes how predictions run, not the model or file."""
    state = tmp_path / 'state.pt'
    frames = [frame for name in OBJECTS for frame in views[name][1]]
    with ContinualLearner(_config()) as fast:
        assert fast.upper_precision == 'float32'      # nothing learned: no graph yet
        _teach(fast, views)
        assert (fast.upper_backend, fast.upper_precision) == ('onnxruntime', 'int8')
        assert fast.stats()['upper_precision'] == 'int8'
        assert fast._upper_runtime.min_cosine >= fast._upper_runtime.INT8_MIN_COSINE
        latents = fast.encode(frames)
        got = fast.probabilities(latents)
        fast.save(str(state))
        with ContinualLearner(_config(upper_precision='float32')) as plain:   # same file
            plain.load(str(state))
            assert plain.upper_precision == 'float32'
            expected = plain.probabilities(latents)
            eager = plain.probabilities(latents, upper=plain._upper)
        assert float((expected - eager).abs().max()) <= 1e-4
        assert 0 < float((got - expected).abs().max()) <= 0.05   # int8 differs, a little
        agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
        assert agree >= 0.9
        assert _accuracy(fast, views) >= 0.8
    with ContinualLearner(_config(upper_precision='int8')) as loaded:
        loaded.load(str(state))          # calibrated on the same memory: the same graph
        assert loaded.upper_precision == 'int8'
        assert torch.equal(loaded.probabilities(latents), got)


def test_int8_upper_part_after_a_restart_answers_exactly_as_before(tmp_path, views):
    """Every step's graph is calibrated on the saved replay memory, so a reload repeats it."""
    frames = [frame for name in OBJECTS for frame in views[name][1]]
    with ContinualLearner(_config(upper_precision='int8')) as lrn:
        latents = None
        for index, name in enumerate(OBJECTS):
            lrn.observe(views[name][0], name)
            lrn.learn()
            if latents is None:
                latents = lrn.encode(frames)
            path = tmp_path / f'step{index}.pt'
            lrn.save(str(path))
            before = lrn.probabilities(latents)
            with ContinualLearner(_config(upper_precision='int8')) as again:
                again.load(str(path))
                assert again.upper_precision == lrn.upper_precision == 'int8'
                assert torch.equal(again.probabilities(latents), before), index


def test_int8_upper_part_falls_back_to_float32_with_a_warning(monkeypatch, caplog, tmp_path,
                                                              views):
    from ros2_latent_replay.core.upper_runtime import UpperInferenceRuntime
    monkeypatch.setattr(UpperInferenceRuntime, 'INT8_MIN_COSINE', 1.01)   # no graph passes
    with ContinualLearner(_config(upper_precision='int8')) as lrn:
        with caplog.at_level('WARNING'):
            _teach(lrn, views, OBJECTS[:2])
        assert (lrn.upper_backend, lrn.upper_precision) == ('onnxruntime', 'float32')
        assert 'int8 graph is unusable' in caplog.text and 'too far from float32' in caplog.text
        assert [p['label'] for p in lrn.predict(views['coffee'][1])].count('coffee') >= 4
    monkeypatch.undo()
    caplog.clear()
    with ContinualLearner(_config()) as lrn:
        with caplog.at_level('WARNING'):
            _teach(lrn, views, OBJECTS[:1])           # one class: logits all zero, still int8
        assert lrn.upper_precision == 'int8' and 'unusable' not in caplog.text
    for no_memory in (dict(strategy='naive'), dict(replay_size=0)):   # nothing to calibrate on
        with ContinualLearner(_config(**no_memory)) as lrn:
            assert lrn.config.effective_upper_precision() == 'float32'
            _teach(lrn, views, OBJECTS[:2])
            assert (lrn.upper_backend, lrn.upper_precision) == ('onnxruntime', 'float32')


def test_int8_upper_part_needs_the_onnx_runtime_and_a_replay_memory():
    for bad in (dict(upper_runtime='torch'), dict(strategy='naive'), dict(replay_size=0)):
        with pytest.raises(ConfigError, match='upper_precision'):
            _config(upper_precision='int8', **bad)
        assert _config(**bad).effective_upper_precision() == 'float32'   # auto: no error
    with pytest.raises(ConfigError, match='upper_precision'):
        _config(upper_precision='int4')
