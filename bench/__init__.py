"""Benchmarks, run on demand (`make bench` or `python -m bench NAME`); results print as a table."""
