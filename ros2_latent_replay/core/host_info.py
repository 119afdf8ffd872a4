"""Facts about the host that change numbers: CPU model, int8 features, cores, versions.

Results files record them because the same settings round differently, and run at
different speeds, from one CPU to the next: ONNX Runtime's int8 kernels in particular
take another path on x86-64 CPUs without VNNI (see
:func:`~.frozen_runtime.open_session`).
"""

import functools
import os
import platform
from typing import Any, Dict, List, Tuple

#: CPU features that decide which int8 kernels ONNX Runtime runs, and how fast.
INT8_CPU_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'amx_int8', 'asimddp')


@functools.lru_cache(maxsize=1)
def _cpuinfo_lines() -> Tuple[str, ...]:
    """Return /proc/cpuinfo's lines, read once: sessions open after every learning step."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as handle:
            return tuple(handle)
    except OSError:
        return ()


def _cpuinfo_value(prefixes: tuple) -> str:
    """Return the value of the first /proc/cpuinfo line starting with one of ``prefixes``."""
    for line in _cpuinfo_lines():
        if line.startswith(prefixes) and ':' in line:
            return line.split(':', 1)[1].strip()
    return ''


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (or platform's guess, or 'unknown')."""
    return _cpuinfo_value(('model name',)) or platform.processor() or 'unknown'


def cpu_int8_flags() -> List[str]:
    """Return which of :data:`INT8_CPU_FLAGS` the CPU has (empty when unknown)."""
    present = set(_cpuinfo_value(('flags', 'Features')).split())
    return [flag for flag in INT8_CPU_FLAGS if flag in present]


def int8_products_saturate() -> bool:
    """Return True on an x86 CPU whose fast uint8 x int8 kernels clip sums to 16 bits.

    That is every x86-64 (or x86) CPU without VNNI (``avx512_vnni`` or ``avx_vnni``): ONNX
    Runtime's kernels there add pairs of products with ``vpmaddubsw``, which saturates.
    An x86 CPU whose flags cannot be read counts as one (the exact path is only slower);
    other architectures do not.
    """
    if platform.machine().lower() not in ('x86_64', 'amd64', 'i386', 'i686', 'x86'):
        return False
    flags = set(_cpuinfo_value(('flags',)).split())
    return not flags & {'avx512_vnni', 'avx_vnni'}


def host_facts() -> Dict[str, Any]:
    """Return the CPU model, its int8 flags, the core count and torch/ONNX Runtime versions."""
    facts: Dict[str, Any] = {'cpu_model': cpu_model(), 'cpu_int8_flags': cpu_int8_flags(),
                             'int8_exact_path': int8_products_saturate(),
                             'cores': os.cpu_count(), 'machine': platform.machine()}
    for name in ('torch', 'onnxruntime'):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            facts[name] = None
    return facts


__all__ = ['INT8_CPU_FLAGS', 'cpu_int8_flags', 'cpu_model', 'host_facts',
           'int8_products_saturate']
