"""The open class set: class names given at teaching time, mapped to ids as they come."""

import unicodedata
from typing import Dict, Iterable, List

from .errors import ClassLimitError, InputError


def normalize_label(label: object, max_length: int) -> str:
    """Return a cleaned class name or raise :class:`InputError`.

    Surrounding whitespace is stripped and the text is NFC-normalised, so ``'mug '`` and
    ``'mug'`` are one class. Empty names, names longer than ``max_length`` characters and
    names holding control characters are refused.
    """
    if not isinstance(label, str):
        raise InputError(f'a label must be a string, got {type(label).__name__}')
    name = unicodedata.normalize('NFC', label).strip()
    if not name:
        raise InputError('the label is empty (or only whitespace)')
    if len(name) > max_length:
        raise InputError(f'the label is {len(name)} characters long; the limit is {max_length}')
    bad = [ch for ch in name if unicodedata.category(ch) in ('Cc', 'Cf', 'Cs', 'Co', 'Cn')]
    if bad:
        raise InputError(f'the label holds control or unassigned characters '
                         f'({", ".join(repr(ch) for ch in bad[:3])})')
    return name


class ClassRegistry:
    """Bidirectional name <-> id map with a fixed maximum size."""

    def __init__(self, max_classes: int) -> None:
        """Create an empty registry for at most ``max_classes`` names."""
        self.max_classes = int(max_classes)
        self._names: List[str] = []
        self._ids: Dict[str, int] = {}

    def __len__(self) -> int:
        """Count the known classes."""
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        """Tell whether ``name`` is known."""
        return name in self._ids

    @property
    def names(self) -> List[str]:
        """Known class names in id order."""
        return list(self._names)

    def id_of(self, name: str) -> int:
        """Id of a known class (KeyError otherwise)."""
        return self._ids[name]

    def name_of(self, class_id: int) -> str:
        """Name of a class id."""
        return self._names[class_id]

    def check_room(self, new_names: Iterable[str]) -> None:
        """Raise :class:`ClassLimitError` if adding ``new_names`` would pass the maximum."""
        unseen = {n for n in new_names if n not in self._ids}
        if len(self._names) + len(unseen) > self.max_classes:
            raise ClassLimitError(
                f'teaching {len(unseen)} new class(es) would make {len(self._names) + len(unseen)}'
                f' classes; max_classes is {self.max_classes} (known: {len(self._names)})')

    def add(self, name: str) -> int:
        """Return the id of ``name``, assigning the next free id if it is new."""
        if name in self._ids:
            return self._ids[name]
        self.check_room([name])
        self._ids[name] = len(self._names)
        self._names.append(name)
        return self._ids[name]

    def copy(self) -> 'ClassRegistry':
        """Independent copy."""
        other = ClassRegistry(self.max_classes)
        for name in self._names:
            other.add(name)
        return other

    def state_dict(self) -> Dict[str, object]:
        """Checkpoint-safe state (plain list of strings)."""
        return {'max_classes': self.max_classes, 'names': list(self._names)}

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> 'ClassRegistry':
        """Rebuild from :meth:`state_dict` output."""
        registry = cls(int(state['max_classes']))
        for name in state['names']:
            if not isinstance(name, str) or name in registry:
                raise ValueError('class names must be distinct strings')
            registry.add(name)
        return registry
