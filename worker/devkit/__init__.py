"""The developer kit: a throwaway Kafka broker, synthetic traffic and the demo. Used by tests,
benchmarks and ``logit-router demo``; the worker's run path never imports it."""
