"""Benchmarks: each case against its baseline in the same run; `python -m bench [--quick]`."""
