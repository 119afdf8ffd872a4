"""Node parameters: one per LearnerConfig field plus the node's own, documented and in sync."""

from dataclasses import fields
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.context import Context
from rclpy.node import Node

from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.errors import ConfigError
from ros2_latent_replay.parameters import (NODE_SPECS, descriptor,
                                           learner_config_from_parameters, markdown_table,
                                           parameter_specs, render_params_yaml,
                                           resolve_state_path)

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'params.yaml'


def test_every_learner_setting_is_a_described_parameter():
    specs = {spec.name: spec for spec in parameter_specs()}
    for field in fields(LearnerConfig):
        spec = specs[field.name]
        assert spec.learner and spec.read_only
        assert spec.default == getattr(LearnerConfig(), field.name)
        assert 'see LearnerConfig' not in spec.description, f'{field.name} is undocumented'
    assert len(specs) == len(fields(LearnerConfig)) + len(NODE_SPECS)


def test_defaults_lie_inside_their_ranges_and_choices():
    for spec in parameter_specs():
        if spec.int_range:
            assert spec.int_range[0] <= spec.default <= spec.int_range[1], spec.name
        if spec.float_range:
            assert spec.float_range[0] <= spec.default <= spec.float_range[1], spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name
        assert descriptor(spec).description == spec.description


def test_params_yaml_is_generated_from_the_specs_and_lists_every_default():
    text = PARAMS_FILE.read_text()
    assert text == render_params_yaml(), 'regenerate config/params.yaml (render_params_yaml)'
    values = yaml.safe_load(text)['/**']['ros__parameters']
    for spec in parameter_specs():
        assert values[spec.name] == spec.default and type(values[spec.name]) is \
            type(spec.default), spec.name
    assert all(len(line) <= 99 for line in text.splitlines())


def test_ros_reads_params_yaml_with_the_declared_types():
    context = Context()
    rclpy.init(context=context)
    try:
        node = Node('latent_replay_node', context=context,
                    cli_args=['--ros-args', '--params-file', str(PARAMS_FILE)],
                    automatically_declare_parameters_from_overrides=True)
        for spec in parameter_specs():
            value = node.get_parameter(spec.name).value
            assert value == spec.default and type(value) is type(spec.default), spec.name
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_learner_config_from_parameters():
    values = {spec.name: spec.default for spec in parameter_specs()}
    assert learner_config_from_parameters(values) == LearnerConfig()
    values.update(epochs=2, strategy='cwr')
    config = learner_config_from_parameters(values)
    assert (config.epochs, config.strategy) == (2, 'cwr')
    with pytest.raises(ConfigError, match='strategy'):
        learner_config_from_parameters(dict(values, strategy='magic'))


def test_state_file_defaults_to_the_ros_home(tmp_path):
    assert resolve_state_path('', {'ROS_HOME': str(tmp_path)}) == \
        tmp_path / 'ros2_latent_replay' / 'state.pt'
    assert resolve_state_path('', {'HOME': '/nowhere'}).parts[-3:] == \
        ('.ros', 'ros2_latent_replay', 'state.pt')
    assert resolve_state_path(str(tmp_path / 'x.pt')) == tmp_path / 'x.pt'
    assert resolve_state_path('relative.pt').is_absolute()


def test_readme_documents_every_parameter_topic_and_service():
    readme = (REPO / 'README.md').read_text()
    table = readme.split('<!-- parameters:begin -->\n')[1].split('<!-- parameters:end -->')[0]
    assert table == markdown_table(), 'update the README parameter table (markdown_table)'
    for spec in parameter_specs():
        assert f'`{spec.name}`' in table, spec.name
    for name in ('`image`', '`label`', '`~/prediction`', '`/diagnostics`', '`~/learn`',
                 '`~/predict`', '`~/save`', '`~/reset`'):
        assert name in readme, name
