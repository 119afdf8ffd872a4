"""Avalanche 0.6.0 strategies set up for the benchmarks (runs in the .venv-bench venv).

* :func:`make_ar1` builds Avalanche's ``AR1`` (latent replay as its authors' library ships
  it). Its constructor downloads pretrained MobileNetV1 weights (``MobilenetV1(pretrained=
  True)`` calls pytorchcv's ``mobilenet_w1``); there is no network here, so while the
  strategy is built the ``mobilenet_w1`` name that ``avalanche.models.mobilenetv1`` looks
  up is swapped for a wrapper that forces ``pretrained=False`` (nothing in the installed
  package is edited). Random weights cost the same time as pretrained ones.
* :func:`make_generic` builds ``Naive``, ``Replay`` (native rehearsal: a buffer of raw
  inputs) or ``Cumulative`` around any torch model, e.g. our pretrained backbone.
"""

import warnings
from typing import List, Sequence, Tuple

import torch
from torch import nn


def quiet_evaluator():
    """Return an Avalanche evaluator with no loggers and no metrics (no printing overhead)."""
    from avalanche.training.plugins import EvaluationPlugin
    return EvaluationPlugin(loggers=[])


def tensor_dataset(x: torch.Tensor, y: torch.Tensor):
    """Return an Avalanche classification dataset over tensors (task label 0)."""
    from avalanche.benchmarks.utils.classification_dataset import \
        _make_taskaware_tensor_classification_dataset
    return _make_taskaware_tensor_classification_dataset(
        x, y.long(), targets=y.long().tolist(), task_labels=0)


def benchmark(train: Sequence[Tuple[torch.Tensor, torch.Tensor]],
              test: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """Return an Avalanche benchmark: one experience per (x, y) pair."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    return benchmark_from_datasets(train=[tensor_dataset(x, y) for x, y in train],
                                   test=[tensor_dataset(x, y) for x, y in test])


def make_ar1(rm_sz: int = 1500, train_epochs: int = 4, train_mb_size: int = 128,
             latent_layer_num: int = 19, **kwargs):
    """Avalanche's AR1 with a randomly initialised MobileNetV1 (no download possible)."""
    import avalanche.models.mobilenetv1 as mobilenet_module
    import avalanche.training.supervised.ar1 as ar1_module

    original = mobilenet_module.mobilenet_w1

    def offline_mobilenet_w1(*args, **kwargs):
        kwargs['pretrained'] = False
        return original(*args, **kwargs)

    mobilenet_module.mobilenet_w1 = offline_mobilenet_w1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            strategy = ar1_module.AR1(rm_sz=rm_sz, train_epochs=train_epochs,
                                      train_mb_size=train_mb_size,
                                      latent_layer_num=latent_layer_num,
                                      freeze_below_layer=f'lat_features.{latent_layer_num}.bn',
                                      evaluator=quiet_evaluator(), device='cpu', **kwargs)
    finally:
        mobilenet_module.mobilenet_w1 = original
    return strategy


def make_generic(kind: str, model: nn.Module, lr: float = 1e-3, mem_size: int = 1500,
                 train_epochs: int = 4, train_mb_size: int = 128, momentum: float = 0.9,
                 weight_decay: float = 5e-4, params: List[nn.Parameter] = None):
    """Avalanche ``Naive``/``Replay``/``Cumulative`` with SGD around ``model``."""
    from avalanche.training import Cumulative, Naive, Replay

    params = params if params is not None else [p for p in model.parameters()
                                                if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    common = dict(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                  train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=256,
                  device='cpu', evaluator=quiet_evaluator())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if kind == 'naive':
            return Naive(**common)
        if kind == 'replay':
            return Replay(mem_size=mem_size, **common)
        if kind == 'cumulative':
            return Cumulative(**common)
    raise ValueError(f'unknown Avalanche strategy {kind!r}')
