"""Metrics against toyworld ground truth and the benchmark harness."""
