"""The robot install layout: `colcon build` of the package in a temporary workspace."""

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'ros2_latent_replay'
SOURCES = ['package.xml', 'setup.py', 'setup.cfg', 'resource', 'launch', 'config', PACKAGE]


def _colcon():
    found = Path(sys.executable).parent / 'colcon'
    return str(found) if found.exists() else shutil.which('colcon')


@pytest.fixture(scope='module')
def install(tmp_path_factory):
    """Build the package with colcon into a fresh workspace; return its install prefix."""
    colcon = _colcon()
    if colcon is None:
        pytest.fail('colcon is not installed (colcon-core, colcon-ros, colcon-python-setup-py '
                    'are in requirements-dev.txt)')
    workspace = tmp_path_factory.mktemp('colcon_ws')
    source = workspace / 'src' / PACKAGE
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}{os.pathsep}'
                                f'{os.environ.get("PATH", "")}')
    result = subprocess.run([colcon, 'build', '--base-paths', 'src'], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return workspace / 'install' / PACKAGE


def test_share_directory_holds_package_xml_launch_and_config(install):
    share = install / 'share' / PACKAGE
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()
    assert (share / 'launch' / 'latent_replay.launch.py').is_file()
    assert (share / 'config' / 'params.yaml').is_file()
    assert (share / 'config' / 'fastdds_large_images.xml').is_file()
    marker = install / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE
    assert marker.is_file()


def test_executable_is_where_ros2_run_looks(install):
    executable = install / 'lib' / PACKAGE / 'latent_replay_node'
    assert executable.is_file() and os.access(executable, os.X_OK)
    text = executable.read_text()
    assert 'ros2_latent_replay.node' in text or 'latent_replay_node' in text
    site = next((install / 'lib').glob('python3*/site-packages'))
    result = subprocess.run(
        [sys.executable, '-c', 'import ros2_latent_replay.node as n, ros2_latent_replay as p; '
                               'print(p.__file__); print(callable(n.main))'],
        env=dict(os.environ, PYTHONPATH=str(site)), cwd=str(site), capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    where, callable_main = result.stdout.split()
    assert Path(where).resolve().is_relative_to(site.resolve()) and callable_main == 'True'


def test_package_xml_is_format_3_with_its_dependencies():
    root = ElementTree.parse(REPO / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == PACKAGE
    depends = {e.text for e in root.iter() if e.tag.endswith('depend')}
    for needed in ('rclpy', 'sensor_msgs', 'std_msgs', 'std_srvs', 'diagnostic_msgs',
                   'launch', 'launch_ros', 'python3-numpy'):
        assert needed in depends, needed
    assert root.find('export/build_type').text == 'ament_python'
    assert root.findtext('version') in (REPO / 'setup.py').read_text()
