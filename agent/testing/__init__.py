"""Test doubles and synthetic workloads shipped with the package (used by tests, the demo and the benchmark)."""
