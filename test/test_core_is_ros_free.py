"""The core learner must run without ROS: no rclpy, no *_msgs / *_srvs, no rosbags."""

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / 'ros2_latent_replay' / 'core'
FORBIDDEN_EXACT = {'rclpy', 'rosbags', 'rosidl_runtime_py', 'rosidl_parser', 'rcl_interfaces',
                   'builtin_interfaces', 'ament_index_python', 'launch', 'launch_ros',
                   'cv_bridge', 'rosbag2_py', 'rclpy_message_converter'}

DYNAMIC_IMPORTS = ('import_module', '__import__')


def _forbidden(module):
    top = module.split('.')[0]
    return top in FORBIDDEN_EXACT or top.endswith('_msgs') or top.endswith('_srvs') \
        or top.startswith('rosbags')


def _called_name(call):
    return getattr(call.func, 'attr', getattr(call.func, 'id', ''))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and _called_name(node) in DYNAMIC_IMPORTS:
            if node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def test_no_core_file_imports_ros():
    files = sorted(CORE.rglob('*.py'))
    assert len(files) > 3, f'the core is missing at {CORE}'
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f'{path.name}:{line} imports {module}' for line, module in _imports(tree)
                  if _forbidden(module)]
    assert not found, '; '.join(found)


def test_importing_the_core_loads_no_ros_module():
    modules = sorted(p.stem for p in CORE.glob('*.py') if p.stem != '__init__')
    script = (
        'import importlib, json, sys\n'
        f'for name in {modules!r}:\n'
        '    importlib.import_module("ros2_latent_replay.core." + name)\n'
        'print(json.dumps(sorted(sys.modules)))\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=300, cwd=str(CORE.parents[1]))
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    ros = [name for name in loaded if _forbidden(name)]
    assert not ros, f'importing the core loaded {ros}'
    assert 'ros2_latent_replay.core.learner' in loaded


def test_the_checks_would_catch_a_ros_import():
    tree = ast.parse('import rclpy\nfrom sensor_msgs.msg import Image\n'
                     'from rosbags.rosbag2 import Reader\nimport importlib\n'
                     'importlib.import_module("std_srvs.srv")\nimport numpy\n')
    assert [m for _, m in _imports(tree) if _forbidden(m)] == [
        'rclpy', 'sensor_msgs.msg', 'rosbags.rosbag2', 'std_srvs.srv']
