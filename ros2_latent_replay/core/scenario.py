"""Reader of continual-learning scenarios in the CORe50 NICv2 filelist format.

A scenario folder holds ``train_batch_{i:02d}_filelist.txt`` files (00..99, then 100,
101, ...: sorted numerically) and ``test_filelist.txt``; each line is
``relative/path.ext label`` (label = a non-negative integer), relative to an image root.
Works for the official CORe50 download (``core50_128x128/`` +
``batches_filelists_NICv2/NIC_v2_391/run0``) and any data set written the same way.

Problems are collected, not hidden: malformed lines, listed images that are missing, images
that cannot be decoded, training batches left empty. :func:`read_scenario` reports how many
of each and the first few (file and line), and raises :class:`ScenarioError` unless
``allow_missing=True``; then the bad entries are skipped and the report is kept in
:attr:`Scenario.problems`. Images are only decoded when a batch is loaded
(:meth:`Scenario.load_entries`), unless ``verify_images=True`` decodes every one up front.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

_BATCH_RE = re.compile(r'^train_batch_(\d+)_filelist\.txt$')
_LABEL_RE = re.compile(r'\d+')
#: how many examples of each kind of problem a report lists
EXAMPLES = 5
Entry = Tuple[str, int]


class ScenarioError(InputError):
    """The scenario's files are missing, malformed or point at missing/unreadable images."""


class ProblemReport:
    """Problems of one kind: how many, and the first few (with file and line)."""

    def __init__(self, kind: str, plural: str = '') -> None:
        """Start an empty report of ``kind`` (e.g. 'missing image'; plural adds an s)."""
        self.kind = kind
        self.plural = plural or kind + 's'
        self.count = 0
        self.examples: List[str] = []

    def add(self, where: str) -> None:
        """Count one more problem; keep the first :data:`EXAMPLES` descriptions."""
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(where)

    def __bool__(self) -> bool:
        """Tell whether at least one problem was counted."""
        return self.count > 0

    def text(self) -> str:
        """One line: '<count> <kind>, first: a; b; c (and N more)'."""
        more = self.count - len(self.examples)
        tail = f' (and {more} more)' if more > 0 else ''
        kind = self.kind if self.count == 1 else self.plural
        return f'{self.count} {kind}, first: ' + '; '.join(self.examples) + tail


@dataclass
class Scenario:
    """Training batches and test set of a scenario, as (relative path, label) lists.

    ``problems`` lists what was skipped (only when reading allowed it), one line per kind.
    """

    directory: Path
    images: Path
    batches: List[List[Entry]]
    test: List[Entry]
    label_names: Dict[int, str] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    allow_missing: bool = False

    def class_name(self, label: int) -> str:
        """Name of a numeric label (the names file's, or the number as text)."""
        return self.label_names.get(int(label), str(int(label)))

    @property
    def num_training_frames(self) -> int:
        """Frames over all training batches."""
        return sum(len(b) for b in self.batches)

    @property
    def labels(self) -> List[int]:
        """Every label used by the training batches or the test set, sorted."""
        return sorted({lbl for b in self.batches for _, lbl in b} | {lbl for _, lbl in self.test})

    def load_entries(self, entries: Sequence[Entry]) -> Tuple[object, List[str]]:
        """Decode ``entries``; return (frames, class names) of the images that could be read.

        Frames are an N x H x W x 3 uint8 RGB array (a list when sizes differ). An image that
        cannot be decoded raises :class:`ScenarioError`, or, when the scenario was read with
        ``allow_missing``, is skipped and added to :attr:`problems`.
        """
        frames, names = [], []
        unreadable = ProblemReport('unreadable image')
        for rel, label in entries:
            try:
                frames.append(_decode(self.images / rel))
                names.append(self.class_name(label))
            except ScenarioError as exc:
                unreadable.add(str(exc))
        if unreadable:
            if not self.allow_missing:
                raise ScenarioError(unreadable.text() + ' (pass allow_missing / '
                                    '--allow-missing to skip them)')
            self.problems.append(unreadable.text())
        return _stack(frames), names

    def load_images(self, entries: Sequence[Entry]) -> object:
        """Decode ``entries`` to an N x H x W x 3 uint8 RGB array (a list when sizes differ)."""
        return self.load_entries(entries)[0]


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB'), dtype=np.uint8)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as exc:
        raise ScenarioError(f'{path}: {type(exc).__name__}: {str(exc)[:120]}') from None


def _stack(frames: List[np.ndarray]) -> object:
    if not frames:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    if len({f.shape for f in frames}) > 1:
        return frames  # different sizes: the learner crops/resizes each
    return np.stack(frames)


def _parse_filelist(path: Path, malformed: ProblemReport) -> List[Entry]:
    entries = []
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
        malformed.add(f'{path.name}: not UTF-8 text')
        return entries
    except OSError as exc:
        raise ScenarioError(f'cannot read {path}: {exc}') from None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        parts = stripped.split()
        if len(parts) != 2 or not _LABEL_RE.fullmatch(parts[1]):
            malformed.add(f'{path.name}:{number}: {stripped[:60]!r} (expected '
                          f"'relative/path label' with a non-negative integer label)")
            continue
        entries.append((parts[0], int(parts[1])))
    return entries


def read_label_names(path) -> Dict[int, str]:
    """Read ``label name`` lines, or one name per line in label order (CORe50's file).

    Raises :class:`ScenarioError` when two labels share a name (they would become one class).
    """
    path = Path(path)
    try:
        with open(path, encoding='utf-8') as handle:
            lines = [ln.strip() for ln in handle if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f'cannot read the label names file {path}: {exc}') from None
    names: Dict[int, str] = {}
    numbered = all(len(ln.split(maxsplit=1)) == 2 and _LABEL_RE.fullmatch(ln.split()[0])
                   for ln in lines)
    for index, line in enumerate(lines):
        if numbered:
            number, name = line.split(maxsplit=1)
            names[int(number)] = name.strip()
        else:
            names[index] = line
    seen: Dict[str, int] = {}
    for label, name in sorted(names.items()):
        if name in seen:
            raise ScenarioError(f'{path}: labels {seen[name]} and {label} are both named '
                                f'{name!r}; names must be unique')
        seen[name] = label
    return names


def _find_labels_file(directory: Path, images: Path) -> Optional[Path]:
    candidates = [directory / 'labels.txt', directory.parent / 'labels.txt',
                  images / 'labels.txt', images.parent / 'labels.txt']
    # CORe50: core50_labels.txt (or the download's core50_class_names.txt) next to
    # core50_128x128/ and the batches_filelists folder
    candidates += [p / name for p in (images.parent, *list(directory.parents)[:3])
                   for name in ('core50_labels.txt', 'core50_class_names.txt')]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def list_batch_files(directory) -> List[Tuple[int, str]]:
    """(index, file name) of every training filelist in ``directory``, sorted numerically."""
    numbered = []
    for name in os.listdir(directory):
        match = _BATCH_RE.match(name)
        if match:
            numbered.append((int(match.group(1)), name))
    numbered.sort()
    return numbered


def read_scenario(directory, images, labels_file=None, allow_missing: bool = False,
                  max_batches: Optional[int] = None, verify_images: bool = False) -> Scenario:
    """Read a scenario folder and check that every listed image exists.

    ``labels_file`` defaults to a ``labels.txt`` (or CORe50's ``core50_labels.txt``) found
    next to the scenario or the image root; without one, class names are the label numbers.
    ``max_batches`` keeps only the first batches (quick runs). ``verify_images`` also decodes
    every image now instead of when it is loaded. Problems raise :class:`ScenarioError` with
    a report (count and first few of each kind) unless ``allow_missing``.
    """
    directory, images = Path(directory), Path(images)
    if not directory.is_dir():
        raise ScenarioError(f'scenario folder {directory} does not exist')
    if not images.is_dir():
        raise ScenarioError(f'image root {images} does not exist')
    numbered = list_batch_files(directory)
    if not numbered:
        raise ScenarioError(f'{directory} holds no train_batch_XX_filelist.txt files')
    indices = [i for i, _ in numbered]
    if indices != list(range(len(indices))):
        gaps = sorted(set(range(indices[-1] + 1)) - set(indices))[:EXAMPLES]
        raise ScenarioError(f'{directory}: training batches must be numbered 0..N-1 without '
                            f'gaps or duplicates; missing {gaps or "none"}, found '
                            f'{len(indices)} files for {len(set(indices))} numbers')
    if max_batches is not None:
        numbered = numbered[:max(1, int(max_batches))]
    test_path = directory / 'test_filelist.txt'
    if not test_path.is_file():
        raise ScenarioError(f'{directory} has no test_filelist.txt')

    malformed = ProblemReport('malformed line')
    batches = [_parse_filelist(directory / name, malformed) for _, name in numbered]
    test = _parse_filelist(test_path, malformed)

    missing = ProblemReport('missing image')
    unreadable = ProblemReport('unreadable image')

    def present(entries: List[Entry], list_name: str) -> List[Entry]:
        kept = []
        for rel, label in entries:
            path = images / rel
            if not path.is_file():
                missing.add(f'{rel} ({list_name})')
                continue
            if verify_images:
                try:
                    _decode(path)
                except ScenarioError as exc:
                    unreadable.add(str(exc))
                    continue
            kept.append((rel, label))
        return kept

    batches = [present(b, name) for b, (_, name) in zip(batches, numbered)]
    test = present(test, 'test_filelist.txt')
    empty = ProblemReport('training batch without any usable image',
                          'training batches without any usable image')
    for batch, (_, name) in zip(batches, numbered):
        if not batch:
            empty.add(name)
    reports = [r for r in (malformed, missing, unreadable, empty) if r]
    problems = [r.text() for r in reports]
    if problems and not allow_missing:
        raise ScenarioError(f'scenario {directory} with images under {images}: '
                            + ' | '.join(problems)
                            + ' (pass allow_missing / --allow-missing to skip them)')
    if not test:
        raise ScenarioError(f'{test_path} lists no usable test images')
    if not any(batches):
        raise ScenarioError(f'{directory}: no training batch has a usable image')
    labels_path = Path(labels_file) if labels_file else _find_labels_file(directory, images)
    names = read_label_names(labels_path) if labels_path else {}
    return Scenario(directory=directory, images=images, batches=batches, test=test,
                    label_names=names, problems=problems, allow_missing=allow_missing)
