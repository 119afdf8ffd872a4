"""ros2_latent_replay: on-robot continual learning with Latent Replay (Pellegrini et al. 2020)."""

__version__ = '0.1.0'
