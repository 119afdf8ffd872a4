"""ROS-free core of ros2_latent_replay: backbones, Latent Replay learner, replay memory, state.

Nothing in this package imports rclpy, message packages or rosbags (a test enforces it), so
the node, the evaluators and the benchmarks all share it.
"""

from .config import LearnerConfig
from .errors import (BusyError, CheckpointError, ClassLimitError, ConfigError,
                     EmptyEpisodeError, InputError, LatentReplayError, NonFiniteError,
                     NotTrainedError)

__all__ = [
    'BusyError', 'CheckpointError', 'ClassLimitError', 'ConfigError', 'ContinualLearner',
    'EmptyEpisodeError', 'InputError', 'LatentReplayError', 'LearnerConfig', 'NonFiniteError',
    'NotTrainedError',
]


def __getattr__(name):
    """Import the learner lazily (it pulls in torch and the backbones)."""
    if name == 'ContinualLearner':
        from .learner import ContinualLearner
        return ContinualLearner
    raise AttributeError(name)
