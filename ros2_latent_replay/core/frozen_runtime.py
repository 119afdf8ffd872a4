"""Fast inference of the frozen lower part of a split backbone.

With the lower part frozen, every frame goes through the same fixed function, so it can
run in ONNX Runtime, which is several times faster than eager PyTorch at batch 1 on a CPU.
:class:`FrozenLowerRuntime` exports the eval-mode lower part to ONNX once (with a dynamic
batch axis), caches the file by a hash of the part's structure, weights and input size,
checks the exported graph against eager PyTorch, and falls back to eager PyTorch when any
of that fails (``prefer='auto'``). With ``precision='int8'`` it runs an 8-bit quantized
version of the graph instead (see :mod:`.lower_quantization`).
"""

import copy
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import LOWER_PRECISIONS
from .errors import ConfigError, InputError
from .host_info import int8_products_saturate
from .lower_quantization import (CALIBRATION_SEED, QUANTIZATION_VERSION, calibration_images,
                                 check_int8_agreement, quantize_lower)

_LOG = logging.getLogger(__name__)

_PREFERENCES = ('auto', 'onnxruntime', 'torch')
PRECISIONS = LOWER_PRECISIONS
_CACHE_FORMAT = b'ros2_latent_replay frozen lower onnx v1'
_INPUT_NAME = 'images'
_OUTPUT_NAME = 'latents'
_OPSET = 17


def default_cache_dir() -> str:
    """Return ``$XDG_CACHE_HOME/ros2_latent_replay`` (or ``~/.cache/ros2_latent_replay``)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'ros2_latent_replay')


def lower_cache_key(lower: nn.Module, input_size: int) -> str:
    """Return a hex digest of the module's structure, state_dict and the input size."""
    digest = hashlib.sha256(_CACHE_FORMAT)
    digest.update(f'|{input_size}|{lower!r}|'.encode())
    for name, tensor in lower.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _export_torchscript(module: nn.Module, example: torch.Tensor) -> bytes:
    """Export with the TorchScript-based exporter (fast, but deprecated in torch 2.9+)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=_OPSET,
                          input_names=[_INPUT_NAME], output_names=[_OUTPUT_NAME],
                          dynamic_axes={_INPUT_NAME: {0: 'batch'}, _OUTPUT_NAME: {0: 'batch'}})
    return buffer.getvalue()


def _export_dynamo(module: nn.Module, example: torch.Tensor) -> bytes:
    """Export with the torch.export-based exporter (needs onnxscript; slower)."""
    batch = torch.export.Dim('batch', min=1)
    # onnxscript's optimiser logs every pass at INFO; keep an application's INFO log readable.
    chatty = [logging.getLogger(name) for name in ('onnxscript', 'onnx_ir')]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(module, (example,), dynamo=True, verbose=False,
                                        input_names=[_INPUT_NAME],
                                        output_names=[_OUTPUT_NAME],
                                        dynamic_shapes=({0: batch},))
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    return program.model_proto.SerializeToString()


def export_onnx(module: nn.Module, example: torch.Tensor) -> Tuple[bytes, float, str]:
    """Export ``module`` (eval mode, CPU) with a dynamic batch axis.

    Tries the TorchScript-based exporter first and the torch.export-based one second;
    returns the serialised graph, the seconds the export took and the exporter's name.
    """
    errors = []
    for exporter in (_export_torchscript, _export_dynamo):
        start = time.perf_counter()
        try:
            with torch.no_grad():
                data = exporter(module, example)
        except Exception as exc:
            errors.append(f'{exporter.__name__[1:]}: {type(exc).__name__}: {exc}')
            continue
        return data, time.perf_counter() - start, exporter.__name__[1:]
    raise RuntimeError('ONNX export failed: ' + ' | '.join(errors))


def open_session(data: bytes, threads: int) -> Any:
    """Open an ONNX Runtime CPU session: sequential, all optimisations, no spinning.

    The session logs errors only: its warnings are about graph clean-ups (e.g. unused
    constants the exporter left in a quantized graph), printed on stderr at every open.

    Quantized operators run exactly on every CPU. On x86 CPUs without VNNI (AVX2, AVX-512
    without VNNI) ONNX Runtime's fast uint8 x int8 kernels add pairs of products in
    saturating 16-bit integers, which bent the int8 lower part's latents to a cosine
    similarity of 0.93 with float32 on an AVX2-only EPYC (0.99 with VNNI). On those CPUs
    (:func:`~.host_info.int8_products_saturate`) the session sets
    ``session.x64quantprecision``: ONNX Runtime turns the weights into uint8 at load and
    runs its exact uint8 x uint8 kernels (~1.4x slower there, still ~1.2x faster than
    float32). Not elsewhere: ONNX Runtime would apply it on VNNI CPUs too, whose fast
    kernels are exact already.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if int8_products_saturate():
        options.add_session_config_entry('session.x64quantprecision', '1')
    return ort.InferenceSession(data, options, providers=['CPUExecutionProvider'])


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference relative to the largest magnitude of ``expected``."""
    return float(np.abs(got - expected).max()) / max(float(np.abs(expected).max()), 1e-12)


def check_against_eager(session: Any, module: nn.Module, probe_shape: Sequence[int],
                        tolerance: float, what: str) -> np.ndarray:
    """Run a seeded probe through ``session`` and eager ``module``; raise if they differ.

    The probe has batch size 1 while graphs are exported at batch 2, so a batch size baked
    into the graph fails here. Returns the eager output.
    """
    probe = torch.randn(*probe_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(probe).numpy()
    feed = {session.get_inputs()[0].name: probe.numpy()}
    got = session.run([session.get_outputs()[0].name], feed)[0]
    if got.shape != expected.shape:
        raise RuntimeError(f'ONNX graph of {what} gives shape {got.shape}, '
                           f'eager {expected.shape}')
    error = relative_error(got, expected)
    if not error <= tolerance:
        raise RuntimeError(f'ONNX graph of {what} differs from eager PyTorch by {error:.3g} '
                           f'(relative), more than {tolerance}')
    return expected


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.onnx')
    try:
        with os.fdopen(handle, 'wb') as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class FrozenLowerRuntime:
    """Run a frozen lower part on float32 ``[N, 3, S, S]`` batches (any ``N >= 1``).

    ``prefer``: ``'auto'`` uses ONNX Runtime when export, session creation and a numeric
    check against eager PyTorch succeed and eager PyTorch otherwise (the reason is logged);
    ``'onnxruntime'`` raises :class:`ConfigError` instead of falling back; ``'torch'`` runs
    eager PyTorch only. ``backend`` says what is used.

    The lower part is copied in eval mode when the runtime is built: later changes to the
    module do not reach the runtime (build a new one). ``threads`` sets ONNX Runtime's
    intra-op threads (0 = its default); the PyTorch fallback uses the process-wide torch
    threads. The ONNX Runtime session runs sequentially with all graph optimisations and
    without busy-waiting worker threads, so it leaves CPU to training running alongside.
    Calls from several threads at once are safe with both backends.

    Exported graphs are cached as ``frozen_lower-<key>.onnx`` in ``cache_dir`` (default
    :func:`default_cache_dir`), keyed by :func:`lower_cache_key`; the TorchScript exporter
    is tried first (about 0.3 s for EfficientNet-Lite0) and the torch.export-based one
    second (several seconds). ``cache=False`` exports every time and writes nothing: for
    a lower part that trains (``lower_mode: slowed``), whose weights change at every step.

    ``precision='int8'`` runs the graph quantized by
    :func:`~.lower_quantization.quantize_lower` (calibrated with ``mean`` / ``std``, the
    backbone's input normalisation), cached as ``frozen_lower-int8-<key>.onnx``. Its
    latents differ from float32 ones, so it never falls back to another engine: without
    ONNX Runtime and its quantization tools it raises :class:`ConfigError`. With
    ``cache=False`` it quantizes at every build (~2 s for the layers after ``blocks.3.2``
    of EfficientNet-Lite0, ~3.5 s for its whole lower part, on one core): the served graph
    of a slowed lower part, whose weights change at every step.
    """

    #: Max abs difference between this runtime's and eager PyTorch's latents, relative to
    #: the largest magnitude of the eager latents (checked when the runtime is built).
    TOLERANCE: float = 1e-4
    #: int8 graphs: the lowest per-image cosine similarity with eager float32 latents
    #: accepted on the check images (seeded smooth random images, not the calibration set).
    INT8_MIN_COSINE: float = 0.95

    def __init__(self, lower: nn.Module, input_size: int, prefer: str = 'auto',
                 threads: int = 0, cache_dir: Optional[str] = None,
                 precision: str = 'float32', mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), cache: bool = True,
                 input_shape: Optional[Sequence[int]] = None,
                 input_map: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        """Prepare the runtime: export or load the ONNX graph, or set up eager PyTorch.

        ``input_shape`` (C, H, W) is what one input to ``lower`` holds when that is not an
        image of ``input_size`` (the trained layers after ``lower_frozen_until`` take the
        frozen layers' activations); only with ``cache=False`` then, and int8 only with
        ``input_map``: the function from normalised images to those inputs (the frozen
        layers), through which the int8 graph's calibration and check images go.
        """
        if prefer not in _PREFERENCES:
            raise ConfigError(f'unknown lower runtime {prefer!r}; valid: '
                              f'{", ".join(_PREFERENCES)}')
        if precision not in PRECISIONS:
            raise ConfigError(f'unknown lower precision {precision!r}; valid: '
                              f'{", ".join(PRECISIONS)}')
        if precision == 'int8' and prefer == 'torch':
            raise ConfigError('lower precision int8 runs in ONNX Runtime only; use lower '
                              "runtime 'auto' or 'onnxruntime'")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ConfigError(f'input_size must be a positive integer, got {input_size!r}')
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ConfigError(f'threads must be an integer >= 0, got {threads!r}')
        image_shape = (3, input_size, input_size)
        self.input_shape = tuple(int(v) for v in input_shape) if input_shape is not None \
            else image_shape
        if self.input_shape != image_shape and (cache or (precision == 'int8'
                                                          and input_map is None)):
            raise ConfigError('a lower part that does not take images runs uncached only, '
                              'and in int8 only with an input_map for its calibration')
        self._input_map = input_map
        self.input_size = input_size
        self.threads = threads
        self.precision = precision
        self._mean = tuple(float(v) for v in mean)
        self._std = tuple(float(v) for v in std)
        self.min_cosine: Optional[float] = None   # int8: measured when the graph is checked
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.cache = bool(cache)
        self.onnx_path: Optional[str] = None      # cached graph file, when ORT is used
        self.from_cache = False                   # True when the graph came from the cache
        self.export_seconds: Optional[float] = None   # time of an export done here
        self._session = None
        self._module: Optional[nn.Module] = copy.deepcopy(lower).eval()
        for parameter in self._module.parameters():
            parameter.requires_grad_(False)
        self._device = next((p.device for p in self._module.parameters()),
                            torch.device('cpu'))

        self.backend = 'torch'
        if prefer != 'torch':
            try:
                self._start_onnxruntime()
                self.backend = 'onnxruntime'
            except Exception as exc:  # any failure means: no ORT for this module
                if prefer == 'onnxruntime' or precision == 'int8':
                    what = 'the int8 lower part' if precision == 'int8' \
                        else 'lower runtime onnxruntime'
                    hint = " (lower_precision 'float32' runs without it)" \
                        if precision == 'int8' else ''
                    raise ConfigError(f'{what} is unavailable: {exc}{hint}') from exc
                _LOG.warning('ONNX Runtime not used for the frozen lower part (%s); '
                             'running it in eager PyTorch', exc)
                self._session = None
        if self.backend == 'torch':
            self._module = self._module.to(memory_format=torch.channels_last)
        else:
            self._module = None     # the ONNX graph holds its own copy of the weights
        # a lower part that trains gets a runtime at every step: log that at debug level
        _LOG.log(logging.INFO if self.cache else logging.DEBUG,
                 'frozen lower part runs on %s%s%s', self.backend,
                 ' in int8' if precision == 'int8' else '',
                 f' ({self.onnx_path}, from cache)' if self.from_cache else '')

    # ------------------------------------------------------------------ ONNX Runtime

    def _start_onnxruntime(self) -> None:
        import onnxruntime  # noqa: F401  (fail early and clearly when it is missing)

        cpu_module = copy.deepcopy(self._module).cpu()
        if not self.cache:
            data = self._export(cpu_module)
            if self.precision == 'int8':
                data = self._quantize(data)
            session = open_session(data, self.threads)
            self._check_and_keep(session, cpu_module)
            return
        key = lower_cache_key(cpu_module, self.input_size)
        if self.precision == 'int8':
            key = hashlib.sha256(f'{key}|{QUANTIZATION_VERSION}|{self._mean}|{self._std}'
                                 .encode()).hexdigest()
            path = os.path.join(self.cache_dir, f'frozen_lower-int8-{key[:32]}.onnx')
        else:
            path = os.path.join(self.cache_dir, f'frozen_lower-{key[:32]}.onnx')
        if os.path.isfile(path):
            session = None
            try:
                with open(path, 'rb') as stream:
                    session = open_session(stream.read(), self.threads)
            except Exception as exc:
                _LOG.warning('cached ONNX graph %s is unusable (%s); exporting again',
                             path, exc)
            if session is not None:
                self.onnx_path, self.from_cache = path, True
                try:
                    self._check_and_keep(session, cpu_module)
                    return
                except Exception as exc:
                    if self.precision == 'int8':
                        # the quantization is deterministic: quantizing again would give
                        # this graph again, ten seconds later
                        raise
                    self.onnx_path, self.from_cache = None, False
                    _LOG.warning('cached ONNX graph %s fails its check (%s); exporting '
                                 'again', path, exc)
        data = self._export(cpu_module)
        if self.precision == 'int8':
            data = self._quantize(data)
        session = open_session(data, self.threads)
        try:
            # cached before the check: an int8 graph that fails it (a network that does
            # not quantize well) is then refused in a second at the next start, not
            # quantized again for ten
            _write_atomically(path, data)
            self.onnx_path = path
        except OSError as exc:
            _LOG.warning('could not cache the ONNX graph in %s (%s); it will be exported '
                         'again next time', self.cache_dir, exc)
        self._check_and_keep(session, cpu_module)

    def _export(self, cpu_module: nn.Module) -> bytes:
        example = torch.zeros(2, *self.input_shape)
        data, self.export_seconds, exporter = export_onnx(cpu_module, example)
        _LOG.log(logging.INFO if self.cache else logging.DEBUG,
                 'exported the frozen lower part to ONNX in %.2f s (%s)',
                 self.export_seconds, exporter)
        return data

    def _inputs_of(self, images: np.ndarray) -> np.ndarray:
        """Return what the graph takes for normalised ``images``: them, or input_map's output."""
        if self._input_map is None:
            return images
        with torch.no_grad():
            return self._input_map(torch.from_numpy(images)).numpy().astype(np.float32)

    def _quantize(self, data: bytes) -> bytes:
        start = time.perf_counter()
        data = quantize_lower(data, self.input_size, self._mean, self._std,
                              input_map=self._inputs_of)
        _LOG.log(logging.INFO if self.cache else logging.DEBUG,
                 'quantized the lower part to int8 in %.2f s', time.perf_counter() - start)
        return data

    def _check_and_keep(self, session: Any, cpu_module: nn.Module) -> None:
        """Check ``session`` against eager ``cpu_module`` (raises when it fails); keep it."""
        if self.precision == 'int8':
            self.min_cosine = self._check_int8(session, cpu_module)
        else:
            check_against_eager(session, cpu_module, (1, *self.input_shape),
                                self.TOLERANCE, 'the lower part')
        self._session = session

    def _check_int8(self, session: Any, cpu_module: nn.Module) -> float:
        """Compare the int8 graph with eager float32 on 16 seeded images; return min cosine."""
        images = self._inputs_of(calibration_images(16, self.input_size, CALIBRATION_SEED + 1,
                                                    self._mean, self._std))
        return check_int8_agreement(session, cpu_module, images, self.INT8_MIN_COSINE,
                                    'the lower part')[0]

    # ------------------------------------------------------------------ inference

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f'expected a torch.Tensor, got {type(x).__name__}')
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise InputError(f'expected inputs of shape [N>=1, '
                             f'{", ".join(map(str, self.input_shape))}], got {list(x.shape)}')
        if not x.is_floating_point():
            raise InputError(f'expected normalised float images, got dtype {x.dtype}')

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 latents of a batch of normalised images (on ``x``'s device)."""
        self._check(x)
        if self._session is not None:
            array = x.detach().to('cpu', torch.float32).contiguous().numpy()
            out = torch.from_numpy(self._session.run([_OUTPUT_NAME], {_INPUT_NAME: array})[0])
            return out if x.device.type == 'cpu' else out.to(x.device)
        with torch.no_grad():
            inputs = x.detach().to(self._device, torch.float32)
            out = self._module(inputs.contiguous(memory_format=torch.channels_last))
        return out.contiguous().to(x.device)


__all__ = ['FrozenLowerRuntime', 'PRECISIONS', 'default_cache_dir', 'export_onnx',
           'lower_cache_key', 'open_session', 'relative_error', 'check_against_eager']
