"""Benchmarks: each prints a table and writes JSON with the CPU into bench-out/ (run from the repository root: python -m bench.NAME)."""
