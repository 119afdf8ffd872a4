"""The method's arithmetic on tiny tensors, checked against the equations written out."""

import math

import pytest
import torch
from torch import nn

from ros2_latent_replay.core.batch_renorm import BatchRenorm2d, convert_batchnorm_to_brn
from ros2_latent_replay.core.class_registry import ClassRegistry, normalize_label
from ros2_latent_replay.core.cwr_head import CWRHead
from ros2_latent_replay.core.errors import ClassLimitError, InputError
from ros2_latent_replay.core.minibatch_mixing import plan_minibatches
from ros2_latent_replay.core.synaptic_intelligence import SynapticIntelligence


def _brn_with_stats(mean, var, r_max, d_max, momentum=0.1):
    layer = BatchRenorm2d(2, eps=1e-12, momentum=momentum, r_max=r_max, d_max=d_max)
    layer.running_mean.copy_(torch.tensor(mean))
    layer.running_var.copy_(torch.tensor(var))
    return layer


def test_brn_clips_r_and_d_as_in_the_equations():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 3) * torch.tensor([3.0, 0.2]).view(1, 2, 1, 1) + 2.0
    layer = _brn_with_stats([0.0, 0.0], [1.0, 1.0], r_max=1.5, d_max=0.5)
    out = layer(x)
    mu = x.mean((0, 2, 3))
    sigma_b = x.var((0, 2, 3), unbiased=False).sqrt()
    r = (sigma_b / 1.0).clamp(1 / 1.5, 1.5)
    d = ((mu - 0.0) / 1.0).clamp(-0.5, 0.5)
    # channel 0: sigma_B ~ 3 > r_max -> r clipped to 1.5; channel 1: ~0.2 < 1/1.5 -> 1/1.5
    assert r[0] == pytest.approx(1.5) and r[1] == pytest.approx(1 / 1.5)
    assert d.tolist() == pytest.approx([0.5, 0.5])
    expected = (x - mu.view(1, 2, 1, 1)) / sigma_b.view(1, 2, 1, 1) * r.view(1, 2, 1, 1) \
        + d.view(1, 2, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_brn_without_clipping_equals_running_stat_normalisation():
    torch.manual_seed(1)
    x = torch.randn(8, 2, 4, 4)
    mu = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    layer = _brn_with_stats(mu.tolist(), var.tolist(), r_max=10.0, d_max=10.0)
    # running stats == batch stats -> r = 1, d = 0 -> plain batch normalisation
    out = layer(x)
    ref = (x - mu.view(1, 2, 1, 1)) / var.sqrt().view(1, 2, 1, 1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_brn_running_update_and_ramp():
    x = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    layer = BatchRenorm2d(2, momentum=0.01, r_max=1.0, d_max=0.0, r_max_limit=1.25,
                          d_max_limit=0.5, ramp_step=4.1e-5)
    before = layer.running_mean.clone()
    layer(x)
    batch_mean = x.mean((0, 2, 3))
    assert torch.allclose(layer.running_mean, before + 0.01 * (batch_mean - before))
    # ramp is per sample: 2 samples in the batch
    assert float(layer.r_max) == pytest.approx(1.0 + 2 * 4.1e-5)
    assert float(layer.d_max) == pytest.approx(0.0 + 2 * 4.1e-5)
    for _ in range(20000):
        layer.r_max.fill_(min(float(layer.r_max) + 1e-3, 1.25))
    assert float(layer.r_max) == pytest.approx(1.25)


def test_brn_eval_is_batchnorm_and_state_survives_state_dict():
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn)
    x = torch.randn(5, 3, 4, 4)
    ref = model(x)
    convert_batchnorm_to_brn(model, momentum=0.01)
    assert isinstance(model[1], BatchRenorm2d)
    model.eval()
    assert torch.allclose(model(x), ref, atol=1e-6)
    model.train()
    model(x)  # moves running stats
    state = model.state_dict()
    assert {'1.running_mean', '1.running_var', '1.r_max', '1.d_max', '1.momentum'} <= set(state)
    clone = convert_batchnorm_to_brn(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    clone.load_state_dict(state)
    assert torch.equal(clone[1].running_mean, model[1].running_mean)
    model.eval()
    clone.eval()
    assert torch.allclose(clone(x), model(x))


def test_cwr_merge_and_mean_shift_follow_the_formula():
    head = CWRHead(in_features=3, max_classes=4)
    head.grow(3)
    head.consolidated[0] = torch.tensor([1.0, 0.0, 2.0])
    head.past_counts[0] = 50.0
    head.prepare_step([0, 2])
    assert torch.equal(head.weight[0], torch.tensor([1.0, 0.0, 2.0]))
    assert torch.count_nonzero(head.weight[1:]) == 0
    trained = torch.tensor([[2.0, 1.0, 0.0], [9.0, 9.0, 9.0], [0.0, 3.0, 4.0], [0., 0., 0.]])
    with torch.no_grad():
        head.weight.copy_(trained)
    head.consolidate([0, 2], [200.0, 100.0])
    mean = (trained[0] + trained[2]) / 2
    w_past = math.sqrt(50.0 / 200.0)
    expected0 = (torch.tensor([1.0, 0.0, 2.0]) * w_past + (trained[0] - mean)) / (w_past + 1)
    assert torch.allclose(head.consolidated[0], expected0)
    assert torch.allclose(head.consolidated[2], trained[2] - mean)  # new class: taken as is
    assert torch.count_nonzero(head.consolidated[1]) == 0  # absent class untouched
    assert head.past_counts.tolist() == [250.0, 0.0, 100.0, 0.0]
    head.use_consolidated()
    logits = head(torch.eye(3))
    assert logits.shape == (3, 3)


def test_si_importance_is_path_integral_over_squared_displacement_clipped():
    param = nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
    si = SynapticIntelligence([('w', param)], c=1.0, clip=0.5, eps=0.0)
    si.begin_step([param])
    grads = [torch.tensor([-1.0, 2.0, 0.1]), torch.tensor([-1.0, 0.0, 0.1])]
    steps = [torch.tensor([0.5, -0.5, -0.01]), torch.tensor([0.5, 0.0, -0.01])]
    path = torch.zeros(3)
    for g, s in zip(grads, steps):
        si.before_update([param])
        param.grad = g.clone()
        with torch.no_grad():
            param.add_(s)
        si.after_update([param])
        path += g * s
    si.end_step([param])
    delta = torch.tensor([1.0, -0.5, -0.02])
    importance = path / delta ** 2
    assert torch.allclose(si.importance__w, importance)
    assert torch.allclose(si.penalty__w, (-importance).clamp(0, 0.5))
    assert torch.equal(si.anchor__w, param.detach())
    with torch.no_grad():
        param.add_(torch.tensor([1.0, 1.0, 1.0]))
    expected = 0.5 * 2.0 * float(((-importance).clamp(0, 0.5)).sum())
    assert float(si.penalty([param], 2.0).detach()) == pytest.approx(expected)


def test_minibatch_mixing_matches_paper_counts():
    plan = plan_minibatches(300, 1500, 128)
    assert plan.iterations == (300 + 1500) // 128 == 14
    assert plan.new_per_minibatch == 300 // 14 == 21
    assert plan.replay_per_minibatch == 128 - 21 == 107
    assert sum(plan.new) == 300  # nothing dropped
    assert all(n + r == 128 for n, r in zip(plan.new, plan.replay))
    first = plan_minibatches(180, 0, 128)
    assert first.iterations == 2 and sum(first.new) == 180 and sum(first.replay) == 0
    tiny = plan_minibatches(3, 1500, 128)
    assert tiny.new == [1, 1, 1] and tiny.replay == [127, 127, 127]
    small_memory = plan_minibatches(100, 50, 128)
    assert small_memory.new == [100] and small_memory.replay == [28]


def test_class_registry_open_set_and_limits():
    registry = ClassRegistry(max_classes=2)
    assert registry.add('mug') == 0
    assert registry.add('mug') == 0
    assert registry.add('ball') == 1
    with pytest.raises(ClassLimitError, match='max_classes is 2'):
        registry.add('cup')
    assert registry.names == ['mug', 'ball']
    restored = ClassRegistry.from_state_dict(registry.state_dict())
    assert restored.names == registry.names


@pytest.mark.parametrize('bad', ['', '   ', 'a\x00b', 'tab\tname', 'x' * 200, 5, None])
def test_bad_labels_are_refused(bad):
    with pytest.raises(InputError):
        normalize_label(bad, max_length=128)


def test_labels_are_normalised():
    assert normalize_label('  tasse\u0301 ', 128) == 'tass\u00e9'
    assert normalize_label('красная чашка', 128) == 'красная чашка'
