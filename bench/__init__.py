"""Benchmarks for receiver: callback intake, archive throughput, end-to-end latency, memory.

Run ``python -m bench`` (or ``python -m bench --quick``); it writes docs/benchmarks.md.
"""
