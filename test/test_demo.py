"""The demo end to end: node process, teaching over topics, learn and predict services."""

import subprocess
import sys

from conftest import REPO, start_process


def test_demo_teaches_real_photos_and_reports_accuracy():
    process = start_process(
        [sys.executable, '-m', 'ros2_latent_replay.demo', '--data', 'skimage', '--objects', '3',
         '--train-views', '6', '--test-views', '2'],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=280)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-4000:]
    for name in ('cat', 'coffee', 'astronaut'):
        assert f"learned '{name}': 6 frames" in output, output[-4000:]
    assert 'accuracy on unseen views: ' in output and '/6 = ' in output
    assert 'knows 3 classes' in output
