"""Benchmarks run by ``make bench`` (figures, not pass/fail tests)."""
