"""The continual learner shared by the ROS node, the evaluators and the benchmarks.

``observe(frames, label)`` turns frames into latents right away (the frozen lower part, through
ONNX Runtime when available) and buffers them as the current teaching episode. ``learn()``
turns the episode into one continual-learning step of the configured strategy:

- ``ar1_free`` (default): CWR* head + the upper part trained, latent replay;
- ``ar1``: the same plus Synaptic Intelligence on the upper part's weights;
- ``cwr``: CWR* head; the upper part trains on the first step only;
- ``naive``: plain fine-tuning of the same upper part and head, no replay, no CWR*
  (a baseline, not for deployment).

A step trains a *copy* of the upper part and swaps it in when the step succeeded, so
``predict()`` keeps answering from the last good model while learning runs, and a step that
fails (NaN, bad input) leaves everything as it was. The replay memory lives in shared memory
(:class:`~ros2_latent_replay.core.replay_buffer.SharedReplayBuffer`), readable from other
processes by name.
"""

import copy
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import checkpoint
from .backbones import build_backbone, split_lower
from .batch_renorm import brn_layers, convert_batchnorm_to_brn, set_brn_schedule
from .class_registry import ClassRegistry, normalize_label
from .config import LearnerConfig
from .cwr_head import CWRHead
from .errors import (BusyError, CheckpointError, ClassLimitError, ConfigError,
                     EmptyEpisodeError, InputError, NonFiniteError, NotTrainedError)
from .frozen_runtime import FrozenLowerRuntime
from .malloc_tuning import tune_malloc
from .minibatch_mixing import plan_minibatches
from .preprocessing import Frames, as_frame_list, frames_to_tensor
from .replay_buffer import SharedReplayBuffer
from .replay_policy import get_policy
from .synaptic_intelligence import SynapticIntelligence
from .upper_runtime import UpperInferenceRuntime

_LOG = logging.getLogger(__name__)

STATE_FORMAT = 'ros2_latent_replay.learner'
STATE_VERSION = 1
_ENCODE_CHUNK = 64
#: Replay-memory latents an int8 upper part is calibrated on after each step and at a load.
CALIBRATION_LATENTS = 128


class UpperModel(nn.Module):
    """Everything above the latent layer: the upper CNN part, the CWR* head and SI state."""

    def __init__(self, body: nn.Module, head: CWRHead,
                 si: Optional[SynapticIntelligence] = None) -> None:
        """Bundle the parts so one ``state_dict``/deepcopy covers them all."""
        super().__init__()
        self.body = body
        self.head = head
        self.si = si

    def shared_parameters(self) -> List[nn.Parameter]:
        """Trainable weights below the head (the ones SI protects)."""
        return [p for p in self.body.parameters() if p.requires_grad]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Logits over the active classes."""
        return self.head(self.body(latents.contiguous(memory_format=torch.channels_last)))


class ContinualLearner:
    """Latent Replay learner (AR1*-free, AR1*, CWR*, naive) over a split backbone."""

    def __init__(self, config: Optional[LearnerConfig] = None,
                 shm_name: Optional[str] = None) -> None:
        """Build the backbone, the upper model and the shared-memory replay buffer."""
        self.config = (config or LearnerConfig()).validate()
        cfg = self.config
        tune_malloc()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self._backbone = build_backbone(cfg.backbone, cut=cfg.latent_layer,
                                        input_size=cfg.input_size, weights=cfg.weights,
                                        random_init=cfg.random_init)
        self.latent_shape = tuple(self._backbone.latent_shape)
        self._brn_kwargs = dict(momentum=cfg.brn_momentum_initial, r_max=1.0, d_max=0.0,
                                r_max_limit=cfg.brn_r_max, d_max_limit=cfg.brn_d_max,
                                ramp_step=cfg.brn_ramp_step)
        lower = convert_batchnorm_to_brn(copy.deepcopy(self._backbone.lower), **self._brn_kwargs)
        self._fresh_lower_state = copy.deepcopy(lower.state_dict())
        # slowed mode with lower_frozen_until: the layers up to it stay frozen
        self._frozen_until = cfg.lower_frozen_until   # validate(): set in slowed mode only
        self._lower = self._prepare_lower(lower)
        self._fresh_upper = self._new_upper()
        self._upper = copy.deepcopy(self._fresh_upper).eval()
        self._runtime = self._make_runtime(self._lower)
        self._frozen_runtime: Optional[FrozenLowerRuntime] = None   # layers up to the split
        self._trained_input_shape: Optional[tuple] = None
        if self._frozen_until:
            frozen = split_lower(self._lower, self._backbone.lower_stages,
                                 self._frozen_until)[0]
            self._frozen_runtime = self._make_runtime(frozen, always=True)
            with torch.no_grad():
                probe = frozen(torch.zeros(1, 3, cfg.input_size, cfg.input_size))
            self._trained_input_shape = tuple(int(v) for v in probe.shape[1:])
        self._lower_serving_warned = False
        self._lower_serving = self._serve_lower(self._lower, strict=True)
        self._upper_runtime: Optional[UpperInferenceRuntime] = None
        self._upper_runtime_warned = False
        self._registry = ClassRegistry(cfg.max_classes)
        self._policy = get_policy(cfg.replay_policy)
        self._memory: Optional[SharedReplayBuffer] = None
        if cfg.replay_size > 0 and cfg.strategy != 'naive':
            self._memory = SharedReplayBuffer(cfg.replay_size, self.latent_shape,
                                              storage=cfg.replay_storage, name=shm_name)
        self._steps = 0
        self._last_learn: Dict[str, Any] = {}
        self._learn_lock = threading.Lock()
        self._episode_lock = threading.Lock()
        self._clear_episode_unlocked()
        self._episode_dropped = 0
        self._closed = False

    # ------------------------------------------------------------------ construction
    def _prepare_lower(self, lower: nn.Module) -> nn.Module:
        trainable = self.config.lower_mode == 'slowed' and self.config.lower_lr_multiplier > 0
        for param in lower.parameters():
            param.requires_grad_(False)
        for param in self._trained_part(lower).parameters():
            param.requires_grad_(trainable)
        return lower.eval()

    def _trained_part(self, lower: nn.Module) -> nn.Module:
        """Return the layers of ``lower`` (its own modules) that a slowed lower part trains."""
        if not self._frozen_until:
            return lower
        return split_lower(lower, self._backbone.lower_stages, self._frozen_until)[1]

    def _make_runtime(self, lower: nn.Module, always: bool = False):
        """Runtime of a frozen lower part (None when it trains); sets :attr:`lower_precision`.

        ``always``: build it for ``lower`` whatever the mode (the frozen layers of a slowed
        lower part split by ``lower_frozen_until``).

        ``lower_precision='auto'`` asks for the int8 graph and takes float32 when it cannot
        be built or fails its check against float32 (a network that quantizes badly).
        """
        self.lower_precision = 'float32'
        if self.config.lower_mode != 'frozen' and not always:
            return None
        cfg = self.config

        def build(precision: str) -> FrozenLowerRuntime:
            return FrozenLowerRuntime(lower, cfg.input_size, prefer=cfg.lower_runtime,
                                      threads=cfg.threads, precision=precision,
                                      mean=self._backbone.mean, std=self._backbone.std)

        wanted = cfg.effective_lower_precision()
        try:
            runtime = build(wanted)
        except ConfigError as exc:
            if cfg.lower_precision != 'auto' or wanted != 'int8':
                raise
            _LOG.warning('lower_precision auto: running the lower part in float32, the int8 '
                         'graph is unusable here (%s)', exc)
            runtime = build('float32')
        self.lower_precision = runtime.precision
        return runtime

    def _serve_lower(self, lower: nn.Module, strict: bool = False
                     ) -> Optional[FrozenLowerRuntime]:
        """ONNX Runtime copy of a lower part that trains (slowed mode), or None for eager.

        Between two learning steps a slowed lower part is a fixed function too, so its
        predictions run a graph of it, rebuilt whenever its weights change (export, session
        and check against eager PyTorch: ~0.5 s, nothing cached on disk). Not with
        ``lower_runtime: torch``. With ``slowed_lower_precision`` int8 the graph is
        quantized as a frozen lower part's is (calibrated on the same seeded images, through
        the frozen layers when ``lower_frozen_until`` splits the part), so a state file
        gives the same graph again; when that graph fails its check, float32 serves (one
        warning per step). When no graph can be built, eager PyTorch serves (one warning);
        at construction (``strict``) ``lower_runtime: onnxruntime`` raises instead.
        """
        cfg = self.config
        if self._runtime is not None or cfg.lower_runtime == 'torch':
            return None
        trained = self._trained_part(lower)

        def build(precision: str) -> FrozenLowerRuntime:
            return FrozenLowerRuntime(trained, cfg.input_size, prefer='onnxruntime',
                                      threads=cfg.threads, precision=precision,
                                      mean=self._backbone.mean, std=self._backbone.std,
                                      cache=False, input_shape=self._trained_input_shape,
                                      input_map=self._frozen_runtime)
        if cfg.effective_slowed_lower_precision() == 'int8':
            try:
                return build('int8')
            except Exception as exc:  # noqa: B902 - any failure means: float32
                _LOG.warning('the trained lower part predicts in float32 this time: its int8 '
                             'graph is unusable (%s)', str(exc)[:300])
        try:
            return build('float32')
        except ConfigError as exc:
            if strict and cfg.lower_runtime == 'onnxruntime':
                raise
            if not self._lower_serving_warned:
                _LOG.warning('the trained lower part predicts in eager PyTorch: %s', exc)
                self._lower_serving_warned = True
            return None

    def architecture_key(self) -> Dict[str, Any]:
        """Return the settings a state file must match (with the lower precision in use)."""
        return dict(self.config.architecture_key(), lower_precision=self.lower_precision)

    def _make_upper_runtime(self, upper: UpperModel) -> Optional[UpperInferenceRuntime]:
        """Float32 ONNX Runtime for predictions with ``upper`` (eval mode), or None for eager."""
        if self.config.upper_runtime == 'torch' or upper.head.active == 0:
            return None
        try:
            return UpperInferenceRuntime(
                upper, self.latent_shape, threads=self.config.threads,
                keep_graph=self.config.effective_upper_precision() == 'int8')
        except Exception as exc:  # noqa: B902 - any failure means: eager PyTorch
            if not self._upper_runtime_warned:
                _LOG.warning('predictions run the upper part in eager PyTorch: ONNX Runtime '
                             'is unavailable for it (%s)', str(exc)[:300])
                self._upper_runtime_warned = True
            return None

    def _quantized_upper_runtime(self, upper: UpperModel, steps: int,
                                 float_runtime: Optional[UpperInferenceRuntime]
                                 ) -> Optional[UpperInferenceRuntime]:
        """Return the runtime predictions use for ``upper`` once the memory is up to date.

        With an int8 upper part (:meth:`LearnerConfig.effective_upper_precision`) that is
        ``float_runtime``'s graph quantized with activations calibrated on
        :data:`CALIBRATION_LATENTS` latents of the replay memory, picked with a seed of
        ``steps``. The memory and the step count are saved in the state file, so a learner
        that loads it builds the very same graph and answers exactly as the one that saved
        it. ``float_runtime`` serves while the memory is empty, and (with a warning) when the
        int8 graph fails its check.
        """
        memory = self._memory
        if self.config.effective_upper_precision() != 'int8' or float_runtime is None \
                or memory is None or memory.fill == 0:
            return float_runtime
        latents = memory.read_all()[0]
        gen = torch.Generator().manual_seed(int(self.config.seed) * 7_919 + int(steps))
        pick = torch.randperm(len(latents), generator=gen)[:CALIBRATION_LATENTS]
        try:
            return UpperInferenceRuntime(upper, self.latent_shape, threads=self.config.threads,
                                         precision='int8',
                                         calibration=latents[pick].float().numpy(),
                                         graph=float_runtime.graph)
        except Exception as exc:  # noqa: B902 - any failure means: float32
            _LOG.warning('predictions use the float32 upper part this time: its int8 graph '
                         'is unusable (%s)', str(exc)[:300])
            return float_runtime
        finally:
            float_runtime.graph = None     # served or dropped: its graph is not needed again

    def _new_upper(self) -> UpperModel:
        body = convert_batchnorm_to_brn(copy.deepcopy(self._backbone.upper), **self._brn_kwargs)
        for param in body.parameters():
            param.requires_grad_(True)
        # channels_last: the upper part's convolutions train ~1.4x faster on CPU this way
        body = body.to(memory_format=torch.channels_last)
        head = CWRHead(self._backbone.feature_dim, self.config.max_classes)
        upper = UpperModel(body, head)
        if self.config.strategy == 'ar1':
            upper.si = SynapticIntelligence(
                [(n, p) for n, p in body.named_parameters() if p.requires_grad],
                c=self.config.si_c, clip=self.config.si_clip, eps=self.config.si_eps)
        return upper

    # ------------------------------------------------------------------ properties
    @property
    def known_classes(self) -> List[str]:
        """Class names taught so far, in id order."""
        return self._registry.names

    @property
    def steps(self) -> int:
        """Number of completed learning steps."""
        return self._steps

    @property
    def replay_fill(self) -> int:
        """Patterns currently in the replay memory."""
        return self._memory.fill if self._memory is not None else 0

    @property
    def replay_capacity(self) -> int:
        """Capacity of the replay memory (0 when replay is off)."""
        return self._memory.capacity if self._memory is not None else 0

    @property
    def replay_shm_name(self) -> str:
        """Shared-memory segment name of the replay memory ('' when replay is off)."""
        return self._memory.name if self._memory is not None else ''

    @property
    def replay_memory(self) -> Optional[SharedReplayBuffer]:
        """The replay buffer itself (None when replay is off)."""
        return self._memory

    @property
    def lower_backend(self) -> str:
        """'onnxruntime' or 'torch': what runs the lower part for latents and predictions."""
        runtime = self._runtime if self._runtime is not None else self._lower_serving
        return runtime.backend if runtime is not None else 'torch'

    @property
    def slowed_lower_precision(self) -> str:
        """'int8' or 'float32' for the graph a slowed lower part predicts with; '' if frozen."""
        if self._runtime is not None:
            return ''
        runtime = self._lower_serving
        return runtime.precision if runtime is not None else 'float32'

    @property
    def upper_backend(self) -> str:
        """'onnxruntime' or 'torch': what runs the current upper part for predictions."""
        return 'onnxruntime' if self._upper_runtime is not None else 'torch'

    @property
    def upper_precision(self) -> str:
        """'int8' or 'float32': the number format of the upper part predictions run now."""
        runtime = self._upper_runtime
        return runtime.precision if runtime is not None else 'float32'

    @property
    def episode_size(self) -> int:
        """Frames collected for the next learning step."""
        with self._episode_lock:
            return sum(len(x) for x in self._episode_latents)

    @property
    def episode_dropped(self) -> int:
        """Frames refused because the episode was full, since the last learn/clear."""
        return self._episode_dropped

    @property
    def episode_labels(self) -> List[str]:
        """Distinct labels in the current episode, in arrival order."""
        with self._episode_lock:
            return list(dict.fromkeys(self._episode_names))

    # ------------------------------------------------------------------ encoding
    def encode(self, frames: Frames) -> torch.Tensor:
        """Latents of ``frames`` with the current lower part (float32, N x C x H x W)."""
        return self._encode(as_frame_list(frames))[1]

    def _encode(self, items: Sequence[np.ndarray]):
        """Return (activations of the frozen layers or None, latents) of ``items``.

        The activations are given only when ``lower_frozen_until`` splits a slowed lower
        part: its trained layers learn from them.
        """
        runtime = self._runtime
        if runtime is None:     # a lower part that trains and its graph are swapped together
            with self._episode_lock:
                runtime, lower = self._lower_serving, self._lower
            if runtime is None:
                lower = self._trained_part(lower)
        frozen = self._frozen_runtime
        chunks, inputs = [], []
        for start in range(0, len(items), _ENCODE_CHUNK):
            part = items[start:start + _ENCODE_CHUNK]
            x = frames_to_tensor(part, self.config.input_size, self._backbone.mean,
                                 self._backbone.std)
            if frozen is not None:
                x = frozen(x)
                inputs.append(x)
            if runtime is not None:
                chunks.append(runtime(x))
            else:
                with torch.no_grad():
                    chunks.append(lower(x))
        latents = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        finite = np.isfinite(latents.numpy()).all() if latents.device.type == 'cpu' \
            else torch.isfinite(latents).all()   # numpy: a fifth of torch's time for one frame
        if not finite:
            raise InputError('the lower part produced NaN/inf latents for these frames')
        return (torch.cat(inputs) if inputs else None), latents

    def _resized(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Frames as uint8 N x 3 x S x S (kept only when the lower part trains)."""
        x = frames_to_tensor(frames, self.config.input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        return (x * 255.0).round_().to(torch.uint8)

    # ------------------------------------------------------------------ episode
    def _clear_episode_unlocked(self) -> None:
        self._episode_latents: List[torch.Tensor] = []
        self._episode_frames: List[torch.Tensor] = []
        self._episode_names: List[str] = []

    def clear_episode(self) -> None:
        """Forget the frames collected since the last learning step."""
        with self._episode_lock:
            self._clear_episode_unlocked()
            self._episode_dropped = 0

    def observe(self, frames: Frames, label: str) -> int:
        """Add ``frames`` of class ``label`` to the current episode; return how many were kept.

        Frames beyond ``max_frames_per_episode`` are dropped and counted
        (:attr:`episode_dropped`). Raises :class:`InputError` for bad frames or labels and
        :class:`ClassLimitError` when ``label`` would be one class too many.
        """
        name = normalize_label(label, self.config.max_label_length)
        items = as_frame_list(frames)
        with self._episode_lock:
            self._registry.check_room(list(self._episode_names) + [name])
            room = self.config.max_frames_per_episode - sum(
                len(x) for x in self._episode_latents)
        keep = items[:max(0, room)]
        if len(keep) < len(items):
            with self._episode_lock:
                self._episode_dropped += len(items) - len(keep)
        if not keep:
            return 0
        # what the trained layers of a slowed lower part learn from: the frames, or the
        # activations of the layers up to lower_frozen_until
        resized, latents = self._encode(keep)
        if resized is None and self._runtime is None:
            resized = self._resized(keep)
        with self._episode_lock:
            room = self.config.max_frames_per_episode - sum(
                len(x) for x in self._episode_latents)
            if room < len(keep):
                self._episode_dropped += len(keep) - max(0, room)
                latents = latents[:max(0, room)]
                resized = resized[:max(0, room)] if resized is not None else None
            if len(latents):
                self._episode_latents.append(latents)
                if resized is not None:
                    self._episode_frames.append(resized)
                self._episode_names.extend([name] * len(latents))
            return len(latents)

    def observe_latents(self, latents: torch.Tensor, label: str) -> int:
        """Like :meth:`observe` for latents already computed by :meth:`encode`.

        The evaluators use it to encode a data set once and replay it through several
        strategies. Only for a frozen lower part (a trainable one needs the frames).
        """
        if self._runtime is None:
            raise InputError('observe_latents needs a frozen lower part; use observe()')
        name = normalize_label(label, self.config.max_label_length)
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 \
                or tuple(latents.shape[1:]) != self.latent_shape:
            raise InputError(f'latents must be an N x {self.latent_shape} tensor')
        if len(latents) == 0:
            raise InputError('no latents given')
        if not torch.isfinite(latents).all():
            raise InputError('latents hold NaN/inf')
        with self._episode_lock:
            self._registry.check_room(list(self._episode_names) + [name])
            room = self.config.max_frames_per_episode - sum(
                len(x) for x in self._episode_latents)
            keep = latents[:max(0, room)].float().clone()
            self._episode_dropped += len(latents) - len(keep)
            if len(keep):
                self._episode_latents.append(keep)
                self._episode_names.extend([name] * len(keep))
            return len(keep)

    def _take_episode(self):
        with self._episode_lock:
            latents, frames, names = (self._episode_latents, self._episode_frames,
                                      self._episode_names)
            self._clear_episode_unlocked()
            self._episode_dropped = 0
        if not names:
            raise EmptyEpisodeError('no frames were collected since the last learning step: '
                                    'set a label and send images first')
        frames_t = torch.cat(frames) if frames else None
        return torch.cat(latents), frames_t, names

    # ------------------------------------------------------------------ learning
    def learn(self) -> Dict[str, Any]:
        """Turn the collected episode into one continual-learning step; return its statistics.

        Raises :class:`EmptyEpisodeError` with nothing collected, :class:`BusyError` when a
        step is already running (at once), :class:`NonFiniteError` when training diverged
        (the model is left unchanged and the episode is discarded).
        """
        if not self._learn_lock.acquire(blocking=False):
            raise BusyError('a learning step is already running; try again when it ends')
        try:
            self._check_open()
            latents, frames, names = self._take_episode()
            latents, frames, names, refused = self._fit_class_limit(latents, frames, names)
            summary = self._learn_step(latents, frames, names)
            summary.update(refused)
            self._last_learn.update(refused)
            return summary
        finally:
            self._learn_lock.release()

    def _fit_class_limit(self, latents: torch.Tensor, frames: Optional[torch.Tensor],
                         names: List[str]):
        """Drop the frames of new classes that no longer fit under ``max_classes``.

        :meth:`observe` checks the limit against the classes known at that moment, and a
        step running then may since have added classes. New classes are kept in arrival
        order while they fit; the others lose their own frames (reported in the summary as
        ``refused_classes`` / ``refused_frames``), not the whole episode.
        """
        new = [name for name in dict.fromkeys(names) if name not in self._registry]
        room = max(0, self.config.max_classes - len(self._registry))
        refused = new[room:]
        if not refused:
            return latents, frames, names, {}
        keep = [i for i, name in enumerate(names) if name not in refused]
        if not keep:
            raise ClassLimitError(
                f'the episode holds only frames of new classes beyond max_classes='
                f'{self.config.max_classes} ({", ".join(refused)}); its {len(names)} frames '
                f'were discarded')
        index = torch.tensor(keep, dtype=torch.long)
        report = {'refused_classes': refused, 'refused_frames': len(names) - len(keep)}
        return (latents[index], frames[index] if frames is not None else None,
                [names[i] for i in keep], report)

    def _learn_step(self, new_latents: torch.Tensor, new_frames: Optional[torch.Tensor],
                    names: List[str]) -> Dict[str, Any]:
        cfg = self.config
        started = time.perf_counter()
        step = self._steps
        first = step == 0
        registry = self._registry.copy()
        new_classes = [n for n in dict.fromkeys(names) if n not in registry]
        new_ids = torch.tensor([registry.add(n) for n in names], dtype=torch.long)

        use_replay = self._memory is not None and not first
        if use_replay and self._memory.fill > 0:
            mem_latents, mem_labels_np = self._memory.read_all()
            mem_labels = torch.from_numpy(mem_labels_np.astype(np.int64))
        else:
            mem_latents = new_latents.new_zeros((0,) + self.latent_shape)
            mem_labels = torch.zeros(0, dtype=torch.long)

        work = copy.deepcopy(self._upper)
        work.head.grow(len(registry))
        lower = copy.deepcopy(self._lower) if self._runtime is None else None
        trained = self._trained_part(lower) if lower is not None else None
        lr = cfg.lr_initial if first else cfg.lr_incremental
        if not first:
            for module in (work, trained):
                if module is not None:
                    set_brn_schedule(module, cfg.brn_momentum_incremental, r_max=cfg.brn_r_max,
                                     d_max=cfg.brn_d_max, ramp_step=0.0)
        train_body = cfg.strategy != 'cwr' or first
        for param in work.body.parameters():
            param.requires_grad_(train_body)

        all_labels = torch.cat([new_ids, mem_labels])
        present, counts = torch.unique(all_labels, return_counts=True)
        cwr = cfg.strategy != 'naive'
        if cwr:
            work.head.prepare_step(present.tolist())

        groups = [{'params': [work.head.weight], 'lr': lr}]
        if train_body:
            groups.append({'params': work.shared_parameters(), 'lr': lr})
        lower_params = []
        if lower is not None and cfg.lower_lr_multiplier > 0:
            lower_params = [p for p in lower.parameters() if p.requires_grad]
            groups.append({'params': lower_params, 'lr': lr * cfg.lower_lr_multiplier})
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        si = work.si if (cfg.strategy == 'ar1' and work.si is not None) else None
        si_params = work.shared_parameters() if si is not None else []
        if si is not None:
            si.begin_step(si_params)

        plan = plan_minibatches(len(new_ids), len(mem_labels), cfg.minibatch_size)
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + step)
        work.train()
        if cfg.strategy == 'cwr' and not first:
            work.body.eval()
        if trained is not None:
            trained.train()
            if cfg.lower_statistics == 'fixed':   # weights train, normalisation stays put
                for layer in brn_layers(trained):
                    layer.eval()
        epoch0_latents = new_latents.clone()
        total_loss, total_correct, total_seen = 0.0, 0, 0
        for epoch in range(cfg.epochs):
            new_order = torch.randperm(len(new_ids), generator=gen)
            replay_order = self._replay_order(len(mem_labels), sum(plan.replay), gen)
            new_pos = rep_pos = 0
            for n_new, n_rep in zip(plan.new, plan.replay):
                idx_new = new_order[new_pos:new_pos + n_new]
                idx_rep = replay_order[rep_pos:rep_pos + n_rep]
                new_pos += n_new
                rep_pos += n_rep
                if lower is not None:
                    x_new = self._lower_train_forward(trained, new_frames[idx_new])
                    if epoch == 0:
                        epoch0_latents[idx_new] = x_new.detach()
                else:
                    x_new = new_latents[idx_new]
                x = torch.cat([x_new, mem_latents[idx_rep]])
                y = torch.cat([new_ids[idx_new], mem_labels[idx_rep]])
                logits = work(x)
                loss = F.cross_entropy(logits, y)
                if si is not None and not first and cfg.si_lambda > 0:
                    loss = loss + si.penalty(si_params, cfg.si_lambda)
                if not torch.isfinite(loss):
                    raise NonFiniteError(
                        f'the loss became {loss.item()} at epoch {epoch}; the model was left '
                        f'unchanged and the episode ({len(names)} frames) was discarded')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if si is not None:
                    si.before_update(si_params)
                optimizer.step()
                if si is not None:
                    si.after_update(si_params)
                total_loss += loss.item() * len(y)
                total_correct += int((logits.argmax(1) == y).sum())
                total_seen += len(y)

        if cwr:
            work.head.consolidate(present.tolist(), counts.tolist())
            work.head.use_consolidated()
        if si is not None:
            si.end_step(si_params)
        work.eval()
        modules = [work] + ([lower] if lower is not None else [])
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise NonFiniteError('training produced NaN/inf weights; the model was '
                                         'left unchanged and the episode was discarded')

        upper_runtime = self._make_upper_runtime(work)
        lower_serving = self._serve_lower(lower.eval()) if lower is not None else None
        stored = 0
        if self._memory is not None:
            rng = np.random.default_rng([int(cfg.seed), step])
            memory_labels = self._memory.labels()
            chosen, slots = self._policy.select(
                capacity=self._memory.capacity, fill=self._memory.fill, batch_index=step,
                new_labels=new_ids.numpy().astype(np.int64), memory_labels=memory_labels,
                rng=rng)
            chosen_t = torch.as_tensor(np.asarray(chosen), dtype=torch.long)
        # commit: swap the trained model in, then update the memory
        with self._episode_lock:
            self._upper = work
            self._upper_runtime = upper_runtime
            self._registry = registry
            if lower is not None:
                self._lower, self._lower_serving = lower, lower_serving
            self._steps = step + 1
        if self._memory is not None and len(chosen_t):
            self._memory.write(np.asarray(slots), epoch0_latents[chosen_t],
                               new_ids[chosen_t].numpy().astype(np.int32))
            stored = len(chosen_t)
        if self.config.effective_upper_precision() == 'int8':
            quantized = self._quantized_upper_runtime(work, step + 1, upper_runtime)
            with self._episode_lock:
                if self._upper is work:
                    self._upper_runtime = quantized
        seconds = time.perf_counter() - started
        self._last_learn = {
            'step': step, 'classes': list(dict.fromkeys(names)), 'new_classes': new_classes,
            'frames': len(names), 'seconds': round(seconds, 4), 'epochs': cfg.epochs,
            'iterations': plan.iterations, 'new_per_minibatch': plan.new_per_minibatch,
            'replay_per_minibatch': plan.replay_per_minibatch if use_replay else 0,
            'replay_stored': stored, 'replay_fill': self.replay_fill,
            'replay_capacity': self.replay_capacity,
            'loss': round(total_loss / max(total_seen, 1), 6),
            'train_accuracy': round(total_correct / max(total_seen, 1), 6),
            'known_classes': len(registry),
        }
        return dict(self._last_learn)

    @staticmethod
    def _replay_order(size: int, needed: int, gen: torch.Generator) -> torch.Tensor:
        if size == 0 or needed == 0:
            return torch.zeros(0, dtype=torch.long)
        reps = -(-needed // size)
        return torch.cat([torch.randperm(size, generator=gen) for _ in range(reps)])[:needed]

    def _lower_train_forward(self, lower: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Latents of the trained layers ``lower`` for uint8 frames or frozen activations."""
        if self._frozen_until:
            x = inputs
        else:
            mean = torch.tensor(self._backbone.mean).view(1, 3, 1, 1)
            std = torch.tensor(self._backbone.std).view(1, 3, 1, 1)
            x = (inputs.float() / 255.0 - mean) / std
        if self.config.lower_lr_multiplier > 0:
            return lower(x)
        with torch.no_grad():  # slowed with multiplier 0: only BRN statistics drift
            return lower(x)

    # ------------------------------------------------------------------ inference
    def predict(self, frames: Frames, top_k: int = 3) -> List[Dict[str, Any]]:
        """Classify ``frames``: per frame the label, its probability and the top-k list."""
        self._check_open()
        if self._steps == 0 or len(self._registry) == 0:
            raise NotTrainedError('nothing has been learned yet: teach at least one class '
                                  '(observe frames with a label, then learn)')
        latents = self.encode(frames)
        return self.predict_latents(latents, top_k=top_k)

    def predict_latents(self, latents: torch.Tensor, top_k: int = 3) -> List[Dict[str, Any]]:
        """Classify precomputed latents (as :meth:`encode` returns them)."""
        with self._episode_lock:   # a model and its class names are swapped in together
            upper, runtime, registry = self._upper, self._upper_runtime, self._registry
        probs = self._probabilities(latents, upper, runtime)
        k = max(1, min(int(top_k), probs.shape[1]))
        values, indices = probs.topk(k, dim=1)
        results = []
        for row_v, row_i in zip(values.tolist(), indices.tolist()):
            top = [[registry.name_of(i), round(v, 6)] for v, i in zip(row_v, row_i)]
            results.append({'label': top[0][0], 'confidence': top[0][1], 'top_k': top})
        return results

    def probabilities(self, latents: torch.Tensor, upper: Optional[UpperModel] = None
                      ) -> torch.Tensor:
        """Softmax over the known classes for precomputed latents.

        With ``upper`` given, that model runs in eager PyTorch; otherwise the current model
        does, in ONNX Runtime when it is available for it (``upper_runtime``).
        """
        runtime = None
        if upper is None:
            with self._episode_lock:
                upper, runtime = self._upper, self._upper_runtime
        return self._probabilities(latents, upper, runtime)

    def _probabilities(self, latents: torch.Tensor, upper: UpperModel,
                       runtime: Optional[UpperInferenceRuntime]) -> torch.Tensor:
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise InputError(f'latents must be N x {self.latent_shape}, '
                             f'got {tuple(latents.shape)}')
        if latents.shape[0] == 0:
            raise InputError('no latents given')
        if runtime is not None:
            logits = runtime(latents)
        else:
            with torch.no_grad():
                logits = upper(latents.float())
        if logits.shape[1] == 0:
            raise NotTrainedError('nothing has been learned yet')
        return torch.softmax(logits, dim=1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume: weights, BRN/CWR*/SI state, classes, replay, config."""
        with self._episode_lock:
            upper, registry, lower, steps = self._upper, self._registry, self._lower, self._steps
        return {
            'format': STATE_FORMAT, 'version': STATE_VERSION,
            'config': self.config.to_dict(),
            'backbone': {'name': self._backbone.name, 'cut': self._backbone.cut,
                         'weights_id': self._backbone.weights_id,
                         'latent_shape': list(self.latent_shape),
                         'lower_precision': self.lower_precision},
            'steps': steps,
            'classes': registry.state_dict(),
            'upper': upper.state_dict(),
            'lower': lower.state_dict() if self._runtime is None else {},
            'replay': self._memory.state_dict() if self._memory is not None else {},
        }

    def load_state_dict(self, state: Dict[str, Any], source: str = 'state') -> None:
        """Restore :meth:`state_dict` output; refuse (:class:`CheckpointError`) a foreign one.

        Nothing changes unless every part was validated.
        """
        if not self._learn_lock.acquire(blocking=False):
            raise BusyError('cannot load a state while a learning step runs')
        try:
            self._load_state_unlocked(state, source)
        finally:
            self._learn_lock.release()

    def _load_state_unlocked(self, state: Dict[str, Any], source: str) -> None:
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise CheckpointError(f'{source} is not a ros2_latent_replay learner state')
        if state.get('version') != STATE_VERSION:
            raise CheckpointError(f'{source} has state version {state.get("version")}; '
                                  f'this build reads {STATE_VERSION}')
        backbone = state.get('backbone', {})
        mine = {'name': self._backbone.name, 'cut': self._backbone.cut,
                'weights_id': self._backbone.weights_id, 'latent_shape': list(self.latent_shape)}
        for key, value in mine.items():
            if backbone.get(key) != value:
                raise CheckpointError(
                    f'{source} was made with {key}={backbone.get(key)!r}, this learner uses '
                    f'{value!r}; refusing to load it')
        theirs = None
        if isinstance(state.get('config'), dict):
            theirs = LearnerConfig.from_dict(state['config']).architecture_key()
            # the precision in use is recorded with the backbone; files written before
            # lower_precision existed hold float32 latents
            asked = state['config'].get('lower_precision')
            theirs['lower_precision'] = backbone.get(
                'lower_precision', asked if asked in ('float32', 'int8') else 'float32')
        mine = self.architecture_key()
        if theirs != mine:
            differ = {k: v for k, v in (theirs or {}).items() if mine.get(k) != v} or theirs
            hint = ''
            if theirs is not None and theirs['lower_precision'] != mine['lower_precision']:
                hint = (f" (set lower_precision to '{theirs['lower_precision']}' to use it: "
                        f'its replay latents were computed in that precision)')
            raise CheckpointError(f'{source} was made with settings {differ}, this learner '
                                  f'has {mine}{hint}; refusing to load it')
        try:
            registry = ClassRegistry.from_state_dict(state['classes'])
            upper = copy.deepcopy(self._fresh_upper)
            upper.load_state_dict(state['upper'], strict=True)
            lower = None
            if self._runtime is None:
                lower = copy.deepcopy(self._lower)
                lower.load_state_dict(state['lower'], strict=True)
            steps = int(state['steps'])
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: B902 - any mismatch is a refusal
            raise CheckpointError(f'{source} does not fit this model: '
                                  f'{type(exc).__name__}: {str(exc)[:300]}') from None
        if upper.head.active != len(registry):
            raise CheckpointError(f'{source} is inconsistent: {len(registry)} class names '
                                  f'but {upper.head.active} active head rows')
        problem = self._state_problem(state, registry, [upper, lower], steps)
        if problem:
            raise CheckpointError(f'{source} is inconsistent ({problem}); refusing to load it')
        if self._memory is not None:
            try:
                self._memory.load_state_dict(state['replay'])
            except CheckpointError:
                raise
            except Exception as exc:  # noqa: B902
                raise CheckpointError(f'{source} has an unusable replay memory: {exc}') \
                    from None
        upper_runtime = self._quantized_upper_runtime(
            upper.eval(), steps, self._make_upper_runtime(upper.eval()))
        lower_serving = self._serve_lower(lower.eval()) if lower is not None else None
        with self._episode_lock:
            self._upper = upper
            self._upper_runtime = upper_runtime
            self._registry = registry
            if lower is not None:
                self._lower, self._lower_serving = lower, lower_serving
            self._steps = steps
            self._clear_episode_unlocked()

    def _state_problem(self, state: Dict[str, Any], registry: ClassRegistry,
                       modules: List[Optional[nn.Module]], steps: int) -> str:
        """Why a well-formed state cannot have been saved by a learner ('' if it can).

        The checksum only catches accidents; these catch files edited and re-checksummed,
        which would otherwise make every later prediction or learning step fail.
        """
        if registry.max_classes != self.config.max_classes:
            return (f'its class list allows max_classes={registry.max_classes}, the model '
                    f'{self.config.max_classes}')
        for name in registry.names:
            try:
                valid = normalize_label(name, 4096) == name
            except InputError:
                valid = False
            if not valid:
                return f'class name {name[:40]!r} is not a valid label'
        if steps < 0 or (steps == 0) != (len(registry) == 0):
            return f'{steps} learned steps for {len(registry)} classes'
        for module in modules:
            for key, tensor in (module.state_dict().items() if module is not None else ()):
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f'{key} holds NaN/inf'
        replay = state.get('replay')
        labels = replay.get('labels') if isinstance(replay, dict) else None
        if isinstance(labels, torch.Tensor) and labels.numel() \
                and int(labels.max()) >= len(registry):
            return (f'its replay memory holds class id {int(labels.max())} but only '
                    f'{len(registry)} classes are known')
        return ''

    def save(self, path: str) -> None:
        """Write the whole state to ``path`` atomically."""
        checkpoint.save_atomic(self.state_dict(), path)

    def load(self, path: str) -> None:
        """Load a state file written by :meth:`save` (see :meth:`load_state_dict`)."""
        self.load_state_dict(checkpoint.load_verified(path), source=f'state file {path}')

    def reset(self) -> None:
        """Forget everything learned: pretrained backbone, no classes, empty memory."""
        if not self._learn_lock.acquire(blocking=False):
            raise BusyError('cannot reset while a learning step runs')
        try:
            fresh_lower = lower_serving = None
            if self._runtime is None:   # a new module: encode() may be using the old one
                fresh_lower = copy.deepcopy(self._lower)
                fresh_lower.load_state_dict(self._fresh_lower_state)
                lower_serving = self._serve_lower(fresh_lower.eval())
            with self._episode_lock:
                self._upper = copy.deepcopy(self._fresh_upper).eval()
                self._upper_runtime = None
                if fresh_lower is not None:
                    self._lower, self._lower_serving = fresh_lower, lower_serving
                self._registry = ClassRegistry(self.config.max_classes)
                self._steps = 0
                self._last_learn = {}
                self._clear_episode_unlocked()
                self._episode_dropped = 0
            if self._memory is not None:
                self._memory.clear()
        finally:
            self._learn_lock.release()

    def stats(self) -> Dict[str, Any]:
        """Counters for diagnostics."""
        return {
            'known_classes': len(self._registry), 'steps': self._steps,
            'replay_fill': self.replay_fill, 'replay_capacity': self.replay_capacity,
            'replay_storage': self.config.replay_storage,
            'replay_bytes': self._memory.nbytes if self._memory is not None else 0,
            'episode_frames': self.episode_size, 'episode_dropped': self._episode_dropped,
            'learning': self._learn_lock.locked(), 'lower_backend': self.lower_backend,
            'upper_backend': self.upper_backend, 'upper_precision': self.upper_precision,
            'lower_precision': self.lower_precision,
            'slowed_lower_precision': self.slowed_lower_precision,
            'last_learn_seconds': self._last_learn.get('seconds', 0.0),
            'backbone': self._backbone.name, 'latent_layer': self._backbone.cut,
            'strategy': self.config.strategy,
        }

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError('this learner was closed')

    def close(self) -> None:
        """Release the shared-memory replay segment."""
        if self._closed:
            return
        self._closed = True
        if self._memory is not None:
            self._memory.close()

    def __enter__(self) -> 'ContinualLearner':
        """Use as a context manager."""
        return self

    def __exit__(self, *exc) -> None:
        """Close on exit."""
        self.close()

    def __del__(self) -> None:
        """Best effort: release shared memory if the owner forgot to close."""
        try:
            self.close()
        except Exception:  # noqa: B902
            pass
