"""Host facts: which CPUs need ONNX Runtime's exact int8 path."""

import platform

import pytest

from ros2_latent_replay.core import host_info


@pytest.mark.parametrize('machine, flags, saturates', [
    ('x86_64', 'fpu sse2 avx2 fma', True),                       # AVX2, no VNNI
    ('x86_64', 'avx2 avx512f avx512bw', True),                   # AVX-512 without VNNI
    ('x86_64', 'avx2 avx512f avx512_vnni', False),               # Cascade Lake and later
    ('AMD64', 'avx2 avx_vnni', False),                           # Alder Lake's AVX-VNNI
    ('x86_64', '', True),                                        # flags unreadable: be exact
    ('aarch64', '', False),                                      # ARM: no such kernel
])
def test_int8_products_saturate_follows_the_cpu_flags(monkeypatch, machine, flags, saturates):
    monkeypatch.setattr(platform, 'machine', lambda: machine)
    monkeypatch.setattr(host_info, '_cpuinfo_value',
                        lambda prefixes: flags if 'flags' in prefixes else '')
    assert host_info.int8_products_saturate() is saturates
    assert set(host_info.cpu_int8_flags()) == set(flags.split()) & set(host_info.INT8_CPU_FLAGS)


def test_host_facts_describe_this_machine():
    facts = host_info.host_facts()
    assert facts['cores'] >= 1 and facts['machine'] == platform.machine()
    assert isinstance(facts['int8_exact_path'], bool) and facts['cpu_model']
    assert set(facts['cpu_int8_flags']) <= set(host_info.INT8_CPU_FLAGS)
