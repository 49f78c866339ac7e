"""Benchmark scripts: checks that take minutes or need extra packages, run by hand rather than by pytest."""
