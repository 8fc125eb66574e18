"""logit-router: route classifier logits from Kafka by softmax confidence margin."""

__version__ = "0.1.0"
