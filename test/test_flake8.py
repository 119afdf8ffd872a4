"""Style: flake8 at 99 columns with pep257 docstrings over the package, tests and scripts."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python_files():
    targets = ['ros2_latent_replay', 'test', 'launch', 'setup.py']
    scripts = REPO / 'scripts'
    if scripts.is_dir():
        targets += [str(p.relative_to(REPO)) for p in sorted(scripts.iterdir())
                    if p.suffix == '.py' or p.read_text(errors='replace').startswith(
                        '#!/usr/bin/env python')]
    return targets


def test_flake8_with_docstrings():
    result = subprocess.run(
        [sys.executable, '-m', 'flake8', '--max-line-length=99', '--docstring-convention=pep257',
         *_python_files()], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert 'flake8-docstrings' in subprocess.run(
        [sys.executable, '-m', 'flake8', '--version'], capture_output=True, text=True).stdout
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
