"""Metrics, the HTTP endpoints and logging: what the worker tells the people who run it."""
