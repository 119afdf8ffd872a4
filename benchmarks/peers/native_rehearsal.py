"""Native rehearsal with our own code path: the whole backbone trains on replayed raw images.

The paper's baseline for Latent Replay: the latent layer is the input itself, so the replay
memory holds images and every layer (lower and upper part) trains on new + replayed images
each minibatch. Everything else is the same as our AR1*-free learner, built from the core's
pieces: Batch Renormalization with the same schedule, the CWR* head, the same SGD settings,
the same minibatch mix (:func:`plan_minibatches`) and the same fill-then-replace memory
policy (``replay_size`` uint8 images of ``input_size``^2).
"""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ros2_latent_replay.core.backbones import build_backbone
from ros2_latent_replay.core.batch_renorm import convert_batchnorm_to_brn, set_brn_schedule
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.cwr_head import CWRHead
from ros2_latent_replay.core.minibatch_mixing import plan_minibatches
from ros2_latent_replay.core.preprocessing import frames_to_tensor
from ros2_latent_replay.core.replay_policy import get_policy


class NativeRehearsal:
    """AR1*-free with a replay memory of raw images and the full network trained."""

    def __init__(self, config: Optional[LearnerConfig] = None):
        """Build the full backbone (lower + upper, BRN) and an empty image memory."""
        self.config = cfg = (config or LearnerConfig()).validate()
        backbone = build_backbone(cfg.backbone, cut=cfg.latent_layer, input_size=cfg.input_size)
        self.mean, self.std = backbone.mean, backbone.std
        brn = dict(momentum=cfg.brn_momentum_initial, r_max=1.0, d_max=0.0,
                   r_max_limit=cfg.brn_r_max, d_max_limit=cfg.brn_d_max,
                   ramp_step=cfg.brn_ramp_step)
        body = nn.Sequential(backbone.lower, backbone.upper)
        self.body = convert_batchnorm_to_brn(copy.deepcopy(body), **brn)
        for param in self.body.parameters():
            param.requires_grad_(True)
        self.head = CWRHead(backbone.feature_dim, cfg.max_classes)
        size = cfg.input_size
        self.memory = np.zeros((cfg.replay_size, 3, size, size), dtype=np.uint8)
        self.memory_labels = np.zeros(cfg.replay_size, dtype=np.int64)
        self.fill = 0
        self.steps = 0
        self.policy = get_policy(cfg.replay_policy)
        self.num_classes = 0

    def _to_uint8(self, frames) -> torch.Tensor:
        x = frames_to_tensor(frames, self.config.input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        return (x * 255.0).round_().to(torch.uint8)

    def _normalise(self, x_u8: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x_u8.float() / 255.0 - mean) / std

    def learn(self, frames, labels) -> Dict[str, float]:
        """One continual-learning step on ``frames`` with integer ``labels``."""
        cfg = self.config
        first = self.steps == 0
        new_x = self._to_uint8(frames)
        new_y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.num_classes = max(self.num_classes, int(new_y.max()) + 1)
        self.head.grow(self.num_classes)
        if not first and self.fill:
            mem_x = torch.from_numpy(self.memory[:self.fill])
            mem_y = torch.from_numpy(self.memory_labels[:self.fill])
        else:
            mem_x = new_x.new_zeros((0,) + tuple(new_x.shape[1:]))
            mem_y = torch.zeros(0, dtype=torch.long)
        if not first:
            set_brn_schedule(self.body, cfg.brn_momentum_incremental, r_max=cfg.brn_r_max,
                             d_max=cfg.brn_d_max, ramp_step=0.0)
        lr = cfg.lr_initial if first else cfg.lr_incremental
        present, counts = torch.unique(torch.cat([new_y, mem_y]), return_counts=True)
        self.head.prepare_step(present.tolist())
        params = [self.head.weight] + [p for p in self.body.parameters()]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        plan = plan_minibatches(len(new_y), len(mem_y), cfg.minibatch_size)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.steps)
        self.body.train()
        for _ in range(cfg.epochs):
            new_order = torch.randperm(len(new_y), generator=gen)
            need = sum(plan.replay)
            if len(mem_y) and need:
                reps = -(-need // len(mem_y))
                rep_order = torch.cat([torch.randperm(len(mem_y), generator=gen)
                                       for _ in range(reps)])[:need]
            else:
                rep_order = torch.zeros(0, dtype=torch.long)
            a = b = 0
            for n_new, n_rep in zip(plan.new, plan.replay):
                i_new, i_rep = new_order[a:a + n_new], rep_order[b:b + n_rep]
                a, b = a + n_new, b + n_rep
                x = self._normalise(torch.cat([new_x[i_new], mem_x[i_rep]]))
                y = torch.cat([new_y[i_new], mem_y[i_rep]])
                loss = F.cross_entropy(self.head(self.body(x)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.head.consolidate(present.tolist(), counts.tolist())
        self.head.use_consolidated()
        self.body.eval()
        rng = np.random.default_rng([cfg.seed, self.steps])
        chosen, slots = self.policy.select(
            capacity=cfg.replay_size, fill=self.fill, batch_index=self.steps,
            new_labels=new_y.numpy(), memory_labels=self.memory_labels[:self.fill], rng=rng)
        chosen = np.asarray(chosen, dtype=np.int64)
        slots = np.asarray(slots, dtype=np.int64)
        if len(chosen):
            self.memory[slots] = new_x[torch.from_numpy(chosen)].numpy()
            self.memory_labels[slots] = new_y.numpy()[chosen]
            self.fill = max(self.fill, int(slots.max()) + 1)
        self.steps += 1
        return {'iterations': plan.iterations, 'replay_fill': self.fill}

    @torch.no_grad()
    def predict_labels(self, frames, chunk: int = 128) -> List[int]:
        """Predicted integer labels of ``frames``."""
        out = []
        for start in range(0, len(frames), chunk):
            x = self._normalise(self._to_uint8(frames[start:start + chunk]))
            out.append(self.head(self.body(x)).argmax(1))
        return torch.cat(out).tolist()
