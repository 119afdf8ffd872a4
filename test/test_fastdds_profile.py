"""config/fastdds_large_images.xml lets 640x480 best-effort images through between processes."""

import os
import subprocess
import sys

from conftest import REPO, start_process, stop_process

PROFILE = REPO / 'config' / 'fastdds_large_images.xml'

SUBSCRIBER = '''
import sys, time, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node('profile_test_subscriber')
sizes, last = [], [0.0]


def on_image(msg):
    sizes.append(len(msg.data))
    last[0] = time.monotonic()


node.create_subscription(Image, 'big_image', on_image, qos_profile_sensor_data)
print('ready', flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (sizes and time.monotonic() > last[0] + 3):
    rclpy.spin_once(node, timeout_sec=0.1)
print('received', len(sizes), min(sizes) if sizes else 0, flush=True)
'''

PUBLISHER = '''
import time, numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node('profile_test_publisher')
pub = node.create_publisher(Image, 'big_image', qos_profile_sensor_data)
deadline = time.monotonic() + 60
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
msg = Image(height=480, width=640, encoding='rgb8', step=1920,
            data=np.random.default_rng(0).integers(0, 256, 921600, dtype=np.uint8).tobytes())
for _ in range(60):
    pub.publish(msg)
    time.sleep(1 / 30)
time.sleep(1.0)
node.destroy_node()
rclpy.shutdown()
'''


def test_profile_carries_vga_frames():
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
    subscriber = start_process([sys.executable, '-c', SUBSCRIBER], env=env,
                               stdout=subprocess.PIPE, text=True)
    publisher = None
    try:
        assert subscriber.stdout.readline().strip() == 'ready'
        publisher = start_process([sys.executable, '-c', PUBLISHER], env=env)
        assert publisher.wait(90) == 0
        output, _ = subscriber.communicate(timeout=90)
    finally:
        for process in (publisher, subscriber):
            if process is not None:
                stop_process(process)
    words = output.split()
    count, smallest = int(words[words.index('received') + 1]), int(words[-1])
    assert count >= 48, f'only {count} of 60 640x480 frames arrived with the profile'
    assert smallest == 640 * 480 * 3
