"""The stream: Kafka clients, the fetch/route loop, the delivery guarantees and publishing,
and the worker as a long-running service."""
