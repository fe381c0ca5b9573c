"""Benchmark suite comparing hyperloom with Dask distributed on one machine.

Entry points: ``python -m benchmarks`` (same as ``benchmarks/run.py``),
``benchmarks/throughput.py`` and ``benchmarks/locality.py``. See README.md.
"""
