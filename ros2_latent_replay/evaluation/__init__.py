"""Evaluation tools: scenario -> rosbag2 writer, offline and live evaluators, their CLIs.

- ``latent-replay-eval`` (:mod:`.eval_cli`): a scenario folder or a bag through the core
  learner, offline; JSON + PNG.
- ``latent-replay-write-bag`` (:mod:`.bag_writer`): a scenario as a rosbag2 (mcap or sqlite3).
- ``latent-replay-play-bag`` (:mod:`.live`): plays such a bag into a running node over ROS 2
  and evaluates it live; same JSON + PNG.

The bag layout is in :mod:`.bag_format` and docs/EVALUATION.md. Nothing here is imported by
the core; rclpy and rosbags are imported only by the modules that need them.
"""
