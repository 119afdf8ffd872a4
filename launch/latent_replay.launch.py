"""Start latent_replay_node with a params file, topic remaps and the large-image DDS profile.

    ros2 launch ros2_latent_replay latent_replay.launch.py \
        image_topic:=/camera/image_raw label_topic:=/teach/label

Arguments: ``params_file`` (default: the package's config/params.yaml), ``image_topic``,
``label_topic``, ``namespace``, ``log_level`` and ``dds_profile`` (a Fast DDS XML profile;
default: config/fastdds_large_images.xml, whose 16 MB shared-memory segment lets 640x480
and larger best-effort images through; '' leaves the environment as it is).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'ros2_latent_replay'


def _dds_profile_actions(context):
    """Point Fast DDS (3.x and 2.x variable names) at the chosen profile, unless it is ''."""
    profile = LaunchConfiguration('dds_profile').perform(context)
    if not profile:
        return []
    return [SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', profile),
            SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', profile)]


def generate_launch_description():
    """Describe the launch: arguments, DDS profile environment and the node."""
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'params.yaml'),
            description='YAML file with the node parameters (under /**: ros__parameters)'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='sensor_msgs/Image topic to learn from and classify'),
        DeclareLaunchArgument('label_topic', default_value='label',
                              description='std_msgs/String topic with the teaching label'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('log_level', default_value='info', description='ROS log level'),
        DeclareLaunchArgument(
            'dds_profile',
            default_value=os.path.join(share, 'config', 'fastdds_large_images.xml'),
            description="Fast DDS XML profile for large images ('' = keep the environment)"),
        OpaqueFunction(function=_dds_profile_actions),
        Node(
            package=PACKAGE,
            executable='latent_replay_node',
            name='latent_replay_node',
            namespace=LaunchConfiguration('namespace'),
            output='screen',
            emulate_tty=True,
            parameters=[LaunchConfiguration('params_file')],
            remappings=[('image', LaunchConfiguration('image_topic')),
                        ('label', LaunchConfiguration('label_topic'))],
            ros_arguments=['--log-level', LaunchConfiguration('log_level')],
            sigterm_timeout='15',
        ),
    ])
