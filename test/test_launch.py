"""The launch file: its arguments, remaps and DDS profile (run where launch_ros exists)."""

import ast
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'latent_replay.launch.py'
ARGUMENTS = {'params_file', 'image_topic', 'label_topic', 'namespace', 'log_level',
             'dds_profile'}


def test_launch_file_declares_its_arguments_and_points_at_package_files():
    tree = ast.parse(LAUNCH_FILE.read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') ==
                'DeclareLaunchArgument'}
    assert declared == ARGUMENTS
    text = LAUNCH_FILE.read_text()
    for needed in ("executable='latent_replay_node'", "('image',", "('label',",
                   'fastdds_large_images.xml', 'params.yaml', 'FASTDDS_DEFAULT_PROFILES_FILE'):
        assert needed in text, needed
    assert (REPO / 'config' / 'fastdds_large_images.xml').is_file()


def test_launch_description_with_launch_ros(tmp_path, monkeypatch):
    if importlib.util.find_spec('launch_ros') is None:
        pytest.skip('launch_ros is not installed (not on PyPI; it comes with a ROS 2 install)')
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    # a minimal ament index so get_package_share_directory finds this checkout's files
    prefix = tmp_path / 'prefix'
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    (index / 'ros2_latent_replay').touch()
    os.symlink(REPO, prefix / 'share' / 'ros2_latent_replay')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))

    spec = importlib.util.spec_from_file_location('latent_replay_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(arguments) == ARGUMENTS
    context = LaunchContext()
    for argument in arguments.values():
        argument.execute(context)
    nodes = [e for e in description.entities if isinstance(e, Node)]
    assert len(nodes) == 1
    assert Path(context.perform_substitution(arguments['params_file'].default_value[0])) \
        .resolve() == (REPO / 'config' / 'params.yaml').resolve()
    profile_actions = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    assert profile_actions
    set_env = profile_actions[0].execute(context)
    assert {a.name[0].perform(context) for a in set_env} == {
        'FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE'}
