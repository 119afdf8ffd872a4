"""Peer implementations the benchmarks compare against (Avalanche wrappers, baselines)."""
