"""Reader of continual-learning scenarios in the CORe50 NICv2 filelist format.

A scenario folder holds ``train_batch_{i:02d}_filelist.txt`` files (00..99, then 100,
101, ...: sorted numerically) and ``test_filelist.txt``; each line is
``relative/path.ext label``, relative to an image root. Works for the official CORe50
download (``core50_128x128/`` + ``batches_filelists_NICv2/NIC_v2_391/run0``) and any data set
written the same way. Missing or malformed entries are reported (how many, the first few)
and raise :class:`ScenarioError` unless ``allow_missing=True``, in which case they are
skipped and listed in :attr:`Scenario.problems`.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

_BATCH_RE = re.compile(r'^train_batch_(\d+)_filelist\.txt$')
Entry = Tuple[str, int]


class ScenarioError(InputError):
    """The scenario's files are missing, malformed or point at missing images."""


@dataclass
class Scenario:
    """Training batches and test set of a scenario, as (relative path, label) lists."""

    directory: Path
    images: Path
    batches: List[List[Entry]]
    test: List[Entry]
    label_names: Dict[int, str] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)

    def class_name(self, label: int) -> str:
        """Name of a numeric label (the names file's, or the number as text)."""
        return self.label_names.get(int(label), str(int(label)))

    @property
    def num_training_frames(self) -> int:
        """Frames over all training batches."""
        return sum(len(b) for b in self.batches)

    def load_images(self, entries: Sequence[Entry]) -> np.ndarray:
        """Decode ``entries`` to an N x H x W x 3 uint8 RGB array (all images one size)."""
        from PIL import Image

        frames = []
        for rel, _ in entries:
            path = self.images / rel
            try:
                with Image.open(path) as img:
                    frames.append(np.asarray(img.convert('RGB'), dtype=np.uint8))
            except (OSError, ValueError) as exc:
                raise ScenarioError(f'cannot read image {path}: {exc}') from None
        if not frames:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            return frames  # different sizes: the learner crops/resizes each
        return np.stack(frames)


def _parse_filelist(path: Path, problems: List[str]) -> List[Entry]:
    entries = []
    with open(path, encoding='utf-8') as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2 or not re.fullmatch(r'-?\d+', parts[1]) or int(parts[1]) < 0:
                problems.append(f'{path.name}:{number}: malformed line {text[:80]!r}')
                continue
            entries.append((parts[0], int(parts[1])))
    return entries


def read_label_names(path: Path) -> Dict[int, str]:
    """Read ``label name`` lines, or one name per line in label order."""
    names: Dict[int, str] = {}
    with open(path, encoding='utf-8') as handle:
        lines = [ln.strip() for ln in handle if ln.strip()]
    for index, line in enumerate(lines):
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r'\d+', parts[0]):
            names[int(parts[0])] = parts[1].strip()
        else:
            names[index] = line
    return names


def _find_labels_file(directory: Path, images: Path) -> Optional[Path]:
    for candidate in (directory / 'labels.txt', directory.parent / 'labels.txt',
                      images / 'labels.txt', directory.parent / 'core50_labels.txt',
                      directory.parent.parent / 'core50_labels.txt'):
        if candidate.is_file():
            return candidate
    return None


def read_scenario(directory, images, labels_file=None, allow_missing: bool = False,
                  max_batches: Optional[int] = None) -> Scenario:
    """Read a scenario folder; check every listed image exists.

    ``labels_file`` defaults to a ``labels.txt`` (or CORe50's ``core50_labels.txt``) found
    next to the scenario. ``max_batches`` keeps only the first batches (quick runs).
    """
    directory, images = Path(directory), Path(images)
    if not directory.is_dir():
        raise ScenarioError(f'scenario folder {directory} does not exist')
    if not images.is_dir():
        raise ScenarioError(f'image root {images} does not exist')
    numbered = []
    for name in os.listdir(directory):
        match = _BATCH_RE.match(name)
        if match:
            numbered.append((int(match.group(1)), name))
    numbered.sort()
    if not numbered:
        raise ScenarioError(f'{directory} holds no train_batch_XX_filelist.txt files')
    indices = [i for i, _ in numbered]
    if indices != list(range(len(indices))):
        raise ScenarioError(f'{directory}: training batches are not numbered 0..'
                            f'{len(indices) - 1} without gaps')
    if max_batches is not None:
        numbered = numbered[:max(1, int(max_batches))]
    test_path = directory / 'test_filelist.txt'
    if not test_path.is_file():
        raise ScenarioError(f'{directory} has no test_filelist.txt')
    problems: List[str] = []
    batches = [_parse_filelist(directory / name, problems) for _, name in numbered]
    test = _parse_filelist(test_path, problems)
    missing = []

    def present(entries: List[Entry]) -> List[Entry]:
        kept = []
        for rel, label in entries:
            if (images / rel).is_file():
                kept.append((rel, label))
            else:
                missing.append(rel)
        return kept

    batches = [present(b) for b in batches]
    test = present(test)
    if missing:
        problems.append(f'{len(missing)} listed image(s) missing under {images}, e.g. '
                        + ', '.join(missing[:5]))
    if problems and not allow_missing:
        raise ScenarioError('; '.join(problems) + ' (pass allow_missing / --allow-missing '
                                                  'to skip them)')
    labels_path = Path(labels_file) if labels_file else _find_labels_file(directory, images)
    names = read_label_names(labels_path) if labels_path else {}
    return Scenario(directory=directory, images=images, batches=batches, test=test,
                    label_names=names, problems=problems)
