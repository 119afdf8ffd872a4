"""Tests of the frozen lower-part runtime: ONNX Runtime vs eager PyTorch, fallback, cache."""

import copy
import os
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import nn

from ros2_latent_replay.core.backbones import build_backbone, split_lower
from ros2_latent_replay.core.errors import ConfigError, InputError
from ros2_latent_replay.core.frozen_runtime import (
    FrozenLowerRuntime, _export_dynamo, check_against_eager, default_cache_dir, export_onnx,
    lower_cache_key, open_session)
from ros2_latent_replay.core.lower_quantization import calibration_images, cosine_similarities

SIZE = 128


class RenormStandIn(nn.Module):
    """A Batch Renormalization layer as the learner uses it: BN's affine op in eval mode."""

    def __init__(self, bn: nn.BatchNorm2d, r_max: float = 1.25, d_max: float = 0.5):
        super().__init__()
        self.eps = bn.eps
        self.r_max, self.d_max = r_max, d_max
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())
        self.register_buffer('running_mean', bn.running_mean.detach().clone())
        self.register_buffer('running_var', bn.running_var.detach().clone())
        self.register_buffer('momentum', torch.tensor(0.01))

    def forward(self, x):
        """Normalise with running statistics (eval) or renormalised batch statistics."""
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        std, running_std = (var + self.eps).sqrt(), (self.running_var + self.eps).sqrt()
        with torch.no_grad():
            r = (std / running_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
            self.running_mean += self.momentum * (mean - self.running_mean)
            self.running_var += self.momentum * (var - self.running_var)
        view = (1, -1, 1, 1)
        x_hat = (x - mean.view(view)) / std.view(view) * r.view(view) + d.view(view)
        return x_hat * self.weight.view(view) + self.bias.view(view)


def swap_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by the stand-in, in place, as the learner does."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, RenormStandIn(child))
        else:
            swap_batchnorm(child)
    return module


def _images(n: int) -> torch.Tensor:
    """Return real photographs (random crops of chelsea and coffee), normalised like lite0."""
    rng = np.random.default_rng(n)
    frames = []
    for i in range(n):
        image = skdata.chelsea() if i % 2 == 0 else skdata.coffee()
        top = rng.integers(0, image.shape[0] - 256)
        left = rng.integers(0, image.shape[1] - 256)
        crop = torch.from_numpy(image[top:top + 256, left:left + 256].copy())
        frames.append(crop.permute(2, 0, 1).float().div(255.0))
    x = F.interpolate(torch.stack(frames), size=(SIZE, SIZE), mode='bilinear',
                      antialias=True, align_corners=False)
    return (x - 0.5) / 0.5


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope='module')
def lower() -> nn.Module:
    """Return the default lower part with every BN swapped for the BRN stand-in."""
    """The default backbone's lower part with every BN swapped for the BRN stand-in."""
    module = swap_batchnorm(build_backbone().lower)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    return module.eval()


@pytest.fixture(scope='module')
def ort_runtime(lower, tmp_path_factory):
    """Build one ONNX Runtime runtime for the module."""
    return FrozenLowerRuntime(lower, SIZE, cache_dir=str(tmp_path_factory.mktemp('cache')))


@pytest.mark.parametrize('batch', [1, 7])
def test_onnxruntime_matches_eager(ort_runtime, lower, batch):
    """ONNX Runtime gives eager PyTorch's latents within TOLERANCE."""
    assert ort_runtime.backend == 'onnxruntime'
    x = _images(batch)
    with torch.no_grad():
        expected = lower(x)
    got = ort_runtime(x)
    assert got.dtype == torch.float32 and got.shape == (batch, 192, 4, 4)
    assert _relative_error(got, expected) <= FrozenLowerRuntime.TOLERANCE


def test_prefer_torch_runs_eager(lower):
    """prefer='torch' runs eager PyTorch."""
    runtime = FrozenLowerRuntime(lower, SIZE, prefer='torch')
    assert runtime.backend == 'torch' and runtime.onnx_path is None
    x = _images(3)
    with torch.no_grad():
        expected = lower(x)
    got = runtime(x)
    assert got.is_contiguous() and got.shape == expected.shape
    assert _relative_error(got, expected) <= FrozenLowerRuntime.TOLERANCE
    assert not got.requires_grad


def test_runtime_is_isolated_from_later_module_changes(lower):
    """The runtime keeps its own frozen copy of the module."""
    module = copy.deepcopy(lower)
    runtime = FrozenLowerRuntime(module, SIZE, prefer='torch')
    x = _images(1)
    before = runtime(x)
    module.train()
    with torch.no_grad():
        module(_images(4))          # training-mode forward moves the running statistics
    assert torch.equal(runtime(x), before)


def test_cache_is_reused_and_keyed_by_weights(lower, tmp_path):
    """A second runtime loads the cached graph; other weights export anew."""
    first = FrozenLowerRuntime(lower, SIZE, prefer='onnxruntime', cache_dir=str(tmp_path))
    assert first.backend == 'onnxruntime' and not first.from_cache
    assert first.export_seconds is not None and os.path.isfile(first.onnx_path)
    mtime = os.stat(first.onnx_path).st_mtime_ns

    second = FrozenLowerRuntime(lower, SIZE, prefer='onnxruntime', cache_dir=str(tmp_path))
    assert second.from_cache and second.export_seconds is None
    assert second.onnx_path == first.onnx_path
    assert os.stat(second.onnx_path).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(first.onnx_path)]   # no temps
    x = _images(2)
    assert torch.equal(first(x), second(x))

    changed = copy.deepcopy(lower)
    with torch.no_grad():
        next(m for m in changed.modules() if isinstance(m, RenormStandIn)).running_mean += 0.1
    assert lower_cache_key(changed, SIZE) != lower_cache_key(lower, SIZE)
    assert lower_cache_key(lower, SIZE + 32) != lower_cache_key(lower, SIZE)
    third = FrozenLowerRuntime(changed, SIZE, cache_dir=str(tmp_path))
    assert not third.from_cache and third.onnx_path != first.onnx_path
    assert len(os.listdir(tmp_path)) == 2


def test_uncached_runtime_exports_every_time_and_writes_nothing(lower, tmp_path):
    """``cache=False`` (a lower part that trains): a checked graph, no file, no cache read."""
    cached = FrozenLowerRuntime(lower, SIZE, prefer='onnxruntime', cache_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    fresh = FrozenLowerRuntime(lower, SIZE, prefer='onnxruntime', cache_dir=str(tmp_path),
                               cache=False)
    assert fresh.backend == 'onnxruntime' and not fresh.from_cache
    assert fresh.onnx_path is None and fresh.export_seconds is not None
    assert sorted(os.listdir(tmp_path)) == files
    x = _images(3)
    assert torch.equal(fresh(x), cached(x))


def test_uncached_int8_runtime_quantizes_the_same_graph_and_writes_nothing(
        lower, int8_runtime, tmp_path):
    """``cache=False`` in int8 (a slowed lower part's served graph): the cached graph's twin."""
    fresh = FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8', cache=False,
                               cache_dir=str(tmp_path))
    assert (fresh.backend, fresh.precision, fresh.onnx_path) == ('onnxruntime', 'int8', None)
    assert fresh.min_cosine >= FrozenLowerRuntime.INT8_MIN_COSINE
    assert os.listdir(tmp_path) == []
    x = _images(3)
    assert torch.equal(fresh(x), int8_runtime(x))


def test_int8_part_after_the_first_layers_is_calibrated_through_them(lower, tmp_path):
    """A part taking activations quantizes on the calibration images mapped by input_map."""
    first, second = split_lower(lower, build_backbone().lower_stages, 'blocks.3.2')
    x = _images(6)
    with torch.no_grad():
        inputs = first(x)
        expected = second(inputs)
    shape = tuple(inputs.shape[1:])
    for bad in (dict(precision='int8'), dict(cache=True, input_map=first)):
        with pytest.raises(ConfigError, match='does not take images'):
            FrozenLowerRuntime(second, SIZE, input_shape=shape, cache_dir=str(tmp_path),
                               **dict(dict(cache=False), **bad))
    part = FrozenLowerRuntime(second, SIZE, threads=1, precision='int8', cache=False,
                              input_shape=shape, input_map=first, cache_dir=str(tmp_path))
    assert (part.backend, part.precision, part.input_shape) == ('onnxruntime', 'int8', shape)
    assert part.min_cosine >= FrozenLowerRuntime.INT8_MIN_COSINE
    got = part(inputs)
    assert got.shape == expected.shape
    cosine = cosine_similarities(got.numpy(), expected.numpy())
    assert cosine.min() >= 0.95, cosine
    assert _relative_error(got, expected) > FrozenLowerRuntime.TOLERANCE   # really int8
    with pytest.raises(InputError, match='expected inputs of shape'):
        part(x)                                     # images, not the first part's output
    assert os.listdir(tmp_path) == []


def test_corrupt_cache_file_is_replaced(lower, tmp_path):
    """An unusable cached file is exported again."""
    first = FrozenLowerRuntime(lower, SIZE, cache_dir=str(tmp_path))
    with open(first.onnx_path, 'wb') as stream:
        stream.write(b'truncated')
    again = FrozenLowerRuntime(lower, SIZE, cache_dir=str(tmp_path))
    assert again.backend == 'onnxruntime' and not again.from_cache
    assert os.path.getsize(again.onnx_path) > 1000
    x = _images(1)
    with torch.no_grad():
        assert _relative_error(again(x), lower(x)) <= FrozenLowerRuntime.TOLERANCE


class NotExportable(nn.Module):
    """Leaves the graph through numpy: no exporter captures it faithfully."""

    def forward(self, x):
        """Return tanh computed outside torch."""
        return torch.from_numpy(np.tanh(x.detach().numpy()))


def test_auto_falls_back_and_onnxruntime_fails_clearly(tmp_path, caplog):
    """'auto' falls back to torch; 'onnxruntime' raises."""
    module = NotExportable()
    with caplog.at_level('WARNING', logger='ros2_latent_replay.core.frozen_runtime'):
        runtime = FrozenLowerRuntime(module, 8, cache_dir=str(tmp_path))
    assert runtime.backend == 'torch'
    assert 'ONNX Runtime not used' in caplog.text
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(runtime(x), torch.tanh(x), atol=1e-6)
    with pytest.raises(ConfigError, match='onnxruntime is unavailable'):
        FrozenLowerRuntime(module, 8, prefer='onnxruntime', cache_dir=str(tmp_path))


@pytest.fixture(scope='module')
def int8_runtime(lower, tmp_path_factory):
    """Build one int8 runtime (quantized at build time) for the module."""
    return FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8',
                              cache_dir=str(tmp_path_factory.mktemp('int8-cache')))


def test_int8_sessions_do_not_saturate_on_any_cpu():
    """Quantized products summing past 16 bits stay exact (CPUs without VNNI saturate them).

    A 1x1 convolution whose uint8 inputs and int8 weights all sit near their maxima: on an
    AVX2-only CPU ONNX Runtime's fast kernel clips pairs of products to int16 and the
    outputs come out ~28% low; the sessions ``open_session`` opens must compute them.
    """
    onnx = pytest.importorskip('onnx')
    from ros2_latent_replay.core.lower_quantization import quantize_graph
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(8, 64, 1, 1) * 0.5 + 0.5)
    net = nn.Sequential(conv).eval()
    x = (torch.rand(16, 64, 4, 4) * 0.2 + 0.8).numpy()
    data, _, _ = export_onnx(net, torch.zeros(2, 64, 4, 4))
    quantized = quantize_graph(data, x, preprocess=False)
    assert [node.op_type for node in onnx.load_from_string(quantized).graph.node].count(
        'QLinearConv') == 1
    session = open_session(quantized, 1)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 0.02


def test_int8_graph_is_quantized_and_close_to_float32_on_photographs(int8_runtime, lower):
    """int8: QLinearConv graph; latents of real photos near eager float32, not equal."""
    import onnx

    assert int8_runtime.backend == 'onnxruntime' and int8_runtime.precision == 'int8'
    assert 'frozen_lower-int8-' in os.path.basename(int8_runtime.onnx_path)
    with open(int8_runtime.onnx_path, 'rb') as stream:
        ops = [node.op_type for node in onnx.load_from_string(stream.read()).graph.node]
    assert ops.count('QLinearConv') >= 40 and 'Conv' not in ops
    assert int8_runtime.min_cosine >= FrozenLowerRuntime.INT8_MIN_COSINE
    x = _images(8)
    with torch.no_grad():
        expected = lower(x)
    got = int8_runtime(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    cosine = cosine_similarities(got.numpy(), expected.numpy())
    assert cosine.min() >= 0.95, cosine
    assert _relative_error(got, expected) > FrozenLowerRuntime.TOLERANCE   # really int8
    # batch composition does not change a frame's latent
    assert torch.allclose(int8_runtime(x[:1]), got[:1], atol=1e-5)


def test_int8_graph_is_cached_apart_from_float32_and_deterministic(
        lower, int8_runtime, tmp_path):
    """A second int8 runtime loads the cache; a fresh quantization computes the same graph."""
    again = FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8',
                               cache_dir=os.path.dirname(int8_runtime.onnx_path))
    assert again.from_cache and again.onnx_path == int8_runtime.onnx_path
    fresh = FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8',
                               cache_dir=str(tmp_path))
    assert not fresh.from_cache
    assert os.path.basename(fresh.onnx_path) == os.path.basename(int8_runtime.onnx_path)
    x = _images(3)
    assert torch.equal(fresh(x), int8_runtime(x)) and torch.equal(again(x), fresh(x))
    plain = FrozenLowerRuntime(lower, SIZE, threads=1, cache_dir=str(tmp_path))
    assert plain.onnx_path != fresh.onnx_path and len(os.listdir(tmp_path)) == 2


def test_int8_graph_failing_its_check_is_kept_and_refused_without_quantizing_again(
        lower, monkeypatch, tmp_path):
    """Quantization is deterministic: a graph that failed its check fails it from the cache."""
    import ros2_latent_replay.core.frozen_runtime as frozen_runtime

    monkeypatch.setattr(FrozenLowerRuntime, 'INT8_MIN_COSINE', 1.01)   # no graph passes
    with pytest.raises(ConfigError, match='too far from float32'):
        FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8', cache_dir=str(tmp_path))
    kept = os.listdir(tmp_path)
    assert len(kept) == 1 and kept[0].startswith('frozen_lower-int8-')

    def quantize_again(*args, **kwargs):
        raise AssertionError('the lower part was quantized again')

    monkeypatch.setattr(frozen_runtime, 'quantize_lower', quantize_again)
    with pytest.raises(ConfigError, match='too far from float32'):
        FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8', cache_dir=str(tmp_path))
    monkeypatch.setattr(FrozenLowerRuntime, 'INT8_MIN_COSINE', 0.95)
    passing = FrozenLowerRuntime(lower, SIZE, threads=1, precision='int8',
                                 cache_dir=str(tmp_path))
    assert passing.from_cache and passing.min_cosine >= 0.95


def test_float32_graph_failing_its_check_from_the_cache_is_exported_again(
        lower, monkeypatch, tmp_path):
    """A float32 graph is cheap to export: a cached one that fails its check is replaced."""
    first = FrozenLowerRuntime(lower, SIZE, cache_dir=str(tmp_path))
    assert not first.from_cache
    monkeypatch.setattr(FrozenLowerRuntime, 'TOLERANCE', -1.0)     # nothing passes
    fallback = FrozenLowerRuntime(lower, SIZE, cache_dir=str(tmp_path))
    assert fallback.backend == 'torch' and not fallback.from_cache
    monkeypatch.undo()
    again = FrozenLowerRuntime(lower, SIZE, cache_dir=str(tmp_path))
    assert again.backend == 'onnxruntime' and again.from_cache


def test_int8_never_falls_back_to_another_engine(tmp_path):
    """int8 with eager PyTorch, or a module ONNX cannot capture, is a ConfigError."""
    with pytest.raises(ConfigError, match='ONNX Runtime only'):
        FrozenLowerRuntime(NotExportable(), 8, prefer='torch', precision='int8')
    with pytest.raises(ConfigError, match='int8 lower part is unavailable'):
        FrozenLowerRuntime(NotExportable(), 8, precision='int8', cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match='unknown lower precision'):
        FrozenLowerRuntime(NotExportable(), 8, precision='int4')


def test_calibration_images_are_seeded_and_normalised():
    """Same arguments give the same images; values stay in the normalised pixel range."""
    a = calibration_images(6, 32, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    b = calibration_images(6, 32, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    c = calibration_images(6, 32, 1, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert a.shape == (6, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0 and a.std() > 0.2


def test_graph_check_refuses_a_graph_that_does_not_compute_the_module():
    """The eager check passes the exported module and refuses one with other weights."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    data, _, _ = export_onnx(module, torch.zeros(2, 3, 6, 6))
    session = open_session(data, 1)
    expected = check_against_eager(session, module, (1, 3, 6, 6), 1e-5, 'the probe')
    assert expected.shape == (1, 4 * 4 * 4)
    other = copy.deepcopy(module)
    with torch.no_grad():
        other[0].weight.mul_(1.01)
    with pytest.raises(RuntimeError, match='ONNX graph of the probe differs from eager'):
        check_against_eager(session, other, (1, 3, 6, 6), 1e-5, 'the probe')
    with pytest.raises(RuntimeError, match='gives shape'):
        check_against_eager(session, nn.Sequential(module, nn.Flatten(0)), (1, 3, 6, 6),
                            1e-5, 'the probe')


def test_dynamo_exporter_handles_renorm_and_dynamic_batch():
    """The fallback exporter handles BRN layers and any batch size."""
    import onnxruntime as ort

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                        nn.BatchNorm2d(8), nn.ReLU6(), nn.ZeroPad2d((0, 1, 0, 1)),
                        nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False),
                        nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    net = swap_batchnorm(net).eval()
    data = _export_dynamo(net, torch.zeros(2, 3, 16, 16))
    session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        got = torch.from_numpy(session.run(None, {'images': x.numpy()})[0])
        with torch.no_grad():
            assert _relative_error(got, net(x)) <= FrozenLowerRuntime.TOLERANCE


@pytest.mark.parametrize('prefer', ['auto', 'torch'])
def test_concurrent_calls_from_two_threads(prefer, lower, ort_runtime):
    """Two threads calling at once get the same results as one."""
    if prefer == 'auto':
        runtime = ort_runtime
    else:
        runtime = FrozenLowerRuntime(lower, SIZE, prefer='torch')
    inputs = [_images(1), _images(3)]
    expected = [runtime(x) for x in inputs]
    failures = []

    def work(index):
        for _ in range(8):
            if not torch.equal(runtime(inputs[index]), expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_bad_arguments_and_inputs(ort_runtime, lower):
    """Bad arguments raise ConfigError, bad inputs InputError."""
    with pytest.raises(ConfigError, match='unknown lower runtime'):
        FrozenLowerRuntime(lower, SIZE, prefer='tensorrt')
    with pytest.raises(ConfigError, match='threads'):
        FrozenLowerRuntime(lower, SIZE, threads=-1)
    with pytest.raises(InputError, match=r'\[N>=1, 3, 128, 128\]'):
        ort_runtime(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError):
        ort_runtime(torch.zeros(0, 3, SIZE, SIZE))
    with pytest.raises(InputError, match='dtype'):
        ort_runtime(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(InputError):
        ort_runtime(np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    """The default cache lies under XDG_CACHE_HOME or ~/.cache."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert default_cache_dir() == os.path.join(str(tmp_path), 'ros2_latent_replay')
    monkeypatch.delenv('XDG_CACHE_HOME')
    assert default_cache_dir() == os.path.join(os.path.expanduser('~'), '.cache',
                                               'ros2_latent_replay')
