"""Errors the command line reports as one line, kept in a module with no heavy imports so
that ``main`` can catch them before pydantic, numpy or aiokafka are loaded."""


class ConfigError(Exception):
    """A configuration that must be refused before anything touches Kafka."""
