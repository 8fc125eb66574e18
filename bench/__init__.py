"""Side-by-side benchmark of the worker against a raw aiokafka pipe and a Quix Streams app.

Run ``python -m bench --help``; what it measures, and how, is in ``docs/performance.md``.
"""
