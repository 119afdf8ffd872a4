"""Forgetting on real data: latent replay vs naive fine-tuning on NIC_coil run0 (30 batches)."""

import numpy as np
import pytest
import torch

from real_images import COIL_IMAGES, NIC_COIL
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.learner import ContinualLearner
from ros2_latent_replay.core.scenario import read_scenario

BATCHES = 30
# a cut near the top keeps the test quick; the method and its defaults are otherwise unchanged
CUT = 'blocks.6.0'


def _stream(learner, scenario, latents_of):
    for batch in scenario.batches:
        for label in dict.fromkeys(lbl for _, lbl in batch):
            rows = [rel for rel, lbl in batch if lbl == label]
            learner.observe_latents(latents_of(rows), scenario.class_name(label))
        learner.learn()


def _accuracy(learner, scenario, test_latents):
    known = set(learner.known_classes)
    names = [scenario.class_name(lbl) for _, lbl in scenario.test]
    keep = [i for i, n in enumerate(names) if n in known]
    preds = learner.predict_latents(test_latents[keep])
    return float(np.mean([p['label'] == names[i] for p, i in zip(preds, keep)]))


@pytest.fixture(scope='module')
def encoded():
    """NIC_coil run0's first batches and test set, encoded once by the default lower part."""
    if not (NIC_COIL / 'run0').is_dir() or not COIL_IMAGES.is_dir():
        pytest.skip(f'NIC_coil scenario not found at {NIC_COIL} (../shared/data absent)')
    scenario = read_scenario(NIC_COIL / 'run0', COIL_IMAGES, max_batches=BATCHES)
    config = LearnerConfig(replay_size=0, strategy='naive', latent_layer=CUT, threads=1)
    with ContinualLearner(config) as encoder:
        rels = sorted({rel for b in scenario.batches for rel, _ in b}
                      | {rel for rel, _ in scenario.test})
        index = {rel: i for i, rel in enumerate(rels)}
        chunks = [rels[s:s + 256] for s in range(0, len(rels), 256)]
        latents = torch.cat([encoder.encode(scenario.load_images([(r, 0) for r in chunk]))
                             for chunk in chunks])
    test_latents = latents[[index[rel] for rel, _ in scenario.test]]
    return scenario, (lambda rows: latents[[index[r] for r in rows]]), test_latents


def test_latent_replay_forgets_clearly_less_than_naive_fine_tuning(encoded):
    scenario, latents_of, test_latents = encoded
    results = {}
    for strategy in ('ar1_free', 'naive'):
        config = LearnerConfig(strategy=strategy, seed=0, latent_layer=CUT, threads=1)
        with ContinualLearner(config) as learner:
            _stream(learner, scenario, latents_of)
            results[strategy] = _accuracy(learner, scenario, test_latents)
            if strategy == 'ar1_free':
                # fill-then-replace: batch 0 (180 frames) + 18 per later batch, none evicted yet
                assert learner.replay_fill == scenario.num_training_frames
    print(f'NIC_coil run0, {BATCHES} batches, accuracy on the classes seen: {results}')
    # measured: ar1_free 79.3%, naive 44.0% (many test views lie in arcs not yet taught)
    assert results['ar1_free'] >= 0.65
    assert results['ar1_free'] >= results['naive'] + 0.20
