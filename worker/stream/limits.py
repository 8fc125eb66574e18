"""Whether each output fits the topic it is for, decided before it is sent.

A record the broker would refuse (larger than the topic's ``max.message.bytes`` or the
producer's ``max_request_size``; without a key on a compacted topic) would otherwise fail its
whole batch, again at every restart: one record would stop its partition. So each output is
checked against its topic's limits, read from the brokers at start, every
``LIMITS_REFRESH_S`` and after the broker refuses a record:

* an output that does not fit is dead-lettered instead (reason ``output_too_large``, or
  ``output_refused`` for a keyless record on a compacted topic);
* a dead letter that does not fit the dead-letter topic is replaced by a claim check
  (``Router.claim_check``): headers that say where the original lies in the input topic.

Sizes are those of a record batch holding the record alone, uncompressed: with compression on,
an upper bound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from worker.core.kafka_settings import KafkaSettings
from worker.core.records import ConsumedRecord, Outbound, Router
from worker.stream.connections import FatalError, make_admin, start_within

log = logging.getLogger(__name__)

LIMITS_REFRESH_S = 60.0  # topic configs change rarely; a refusal refreshes them at once
# Room for a record's framing beside its key and value, far above what the varints and
# attributes of a record and its batch header take (61 bytes and a few varints).
FRAMING = 128
HEADER_FRAMING = 10  # the two length varints of a header, at the most
# What the broker says when a record is its own problem, not the broker's or the cluster's.
RECORD_REFUSALS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
)
# Room a claim check takes at the most: its headers (the message is cut to 1 KiB).
CLAIM_CHECK_BYTES = 4096
TOPIC_AUTHORIZATION_FAILED = 29  # the error code of DescribeConfigs without the right
# A topic's max.message.bytes unless set otherwise: the broker's message.max.bytes default
# (Kafka's broker configuration reference), assumed for a topic whose own cannot be read.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
_KEY, _VALUE, _HEADERS = attrgetter("key"), attrgetter("value"), attrgetter("headers")


class OutputRefused(Exception):
    """Why an output, or a dead letter, cannot go to its topic; ``code`` is the dead-letter
    reason it gives an output."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TopicLimit:
    max_bytes: int  # the largest record batch the topic takes from this worker
    compacted: bool  # records need a key


def record_size(o: Outbound) -> int:
    """Bytes of a record batch holding ``o`` alone (uncompressed)."""
    if not o.headers:
        return FRAMING + len(o.key or b"") + len(o.value or b"")
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(o.key, o.value, o.headers))


def refusal(o: Outbound, limit: TopicLimit | None) -> OutputRefused | None:
    """Why ``o`` would be refused by its topic, or ``None`` if it fits."""
    if limit is None:
        return None
    if limit.compacted and o.key is None:
        return OutputRefused("output_refused", f"{o.topic} is compacted: a record needs a key")
    size = record_size(o)
    if size > limit.max_bytes:
        return OutputRefused(
            "output_too_large", f"{size} bytes for {o.topic}, which takes at most {limit.max_bytes}"
        )
    return None


class Fitter:
    """Outputs made to fit their topics; see the module docstring."""

    def __init__(self, router: Router, kafka: KafkaSettings, limits: Mapping[str, TopicLimit]):
        self.router = router
        self.kafka = kafka
        self.limits = dict(limits)  # updated in place: publishers hold it

    async def refresh(self) -> None:
        """Read the output topics' limits again."""
        outputs = self.router.outputs
        topics = [outputs.routed, outputs.escalated, outputs.dead_letter]
        limits = await read_limits(self.kafka, topics, outputs.dead_letter)
        self.limits.clear()
        self.limits.update(limits)

    def fit(self, records: Sequence[ConsumedRecord], outputs: list[Outbound]) -> list[Outbound]:
        limits = self.limits
        if surely_fit(outputs, limits):
            return outputs
        for i, o in enumerate(outputs):
            why = refusal(o, limits.get(o.topic))
            if why is not None:
                outputs[i] = self.replace(records[i], o, why)
        return outputs

    def replace(self, rec: ConsumedRecord, o: Outbound, why: OutputRefused) -> Outbound:
        """A dead letter in place of an output that cannot be written; a claim check in place
        of a dead letter that cannot."""
        if o.kind != "dead_letter":
            o = self.router.dead_letter(rec, why.code, why)
            why_not = refusal(o, self.limits.get(o.topic))
            if why_not is None:
                return o
            why = why_not
        claim = self.router.claim_check(rec, o.reason or "other", why)
        if refusal(claim, self.limits.get(claim.topic)) is not None:
            raise FatalError(f"the dead-letter topic cannot hold a claim check: {why}")
        return claim


def surely_fit(outputs: Sequence[Outbound], limits: Mapping[str, TopicLimit]) -> bool:
    """Whether every output fits whichever topic of ``limits`` it is for, judged from a bound
    on the largest record of the lot, read in C: no output is looked at alone unless the bound
    comes near the smallest limit (or a topic is compacted)."""
    if any(limit.compacted for limit in limits.values()):
        return False
    if not limits:
        return True
    smallest = min(limit.max_bytes for limit in limits.values())
    values = max(map(len, filter(None, map(_VALUE, outputs))), default=0)
    keys = max(map(len, filter(None, map(_KEY, outputs))), default=0)
    headers = list(chain.from_iterable(map(_HEADERS, outputs)))
    # Every header of the lot, as if one record carried them all; a name's characters take up
    # to 4 bytes each in UTF-8.
    header_bytes = 4 * sum(map(len, filter(None, chain.from_iterable(headers))))
    header_bytes += HEADER_FRAMING * len(headers)
    return FRAMING + keys + values + header_bytes <= smallest


async def read_limits(
    kafka: KafkaSettings, topics: Iterable[str], dead_letter: str
) -> dict[str, TopicLimit]:
    """Each topic's limits as the brokers have them now. A dead-letter topic that is compacted
    (it would drop dead letters) or too small for a claim check is refused."""
    admin = make_admin(kafka)
    await start_within(admin, kafka, "admin client")
    try:
        wanted = {"max.message.bytes": None, "cleanup.policy": None}
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, dict(wanted)) for t in topics]
        responses = await admin.describe_configs(resources)
    except KafkaError as exc:
        raise FatalError(f"cannot read the output topics' configuration: {exc!r}") from None
    finally:
        await admin.close()
    limits: dict[str, TopicLimit] = {}
    for response in responses:
        for error, _message, _type, topic, entries in response.resources:
            if error == TOPIC_AUTHORIZATION_FAILED:
                # Kafka's default, not max_request_size: an output the topic then refuses would
                # be refused again after every restart under exactly-once, which never learns
                # the topic's limit (a crash loop); too cautious costs a dead letter instead.
                assumed = min(KAFKA_DEFAULT_MAX_MESSAGE_BYTES, kafka.max_request_size)
                log.warning(
                    "not allowed to describe the configuration of %s: outputs to it are held to "
                    "Kafka's default limit, %d bytes (grant DescribeConfigs on the topic to use "
                    "its own)",
                    topic,
                    assumed,
                )
                limits[topic] = TopicLimit(assumed, compacted=False)
                continue
            if error:
                raise FatalError(f"cannot read the configuration of {topic}: error {error}")
            config = {entry[0]: entry[1] for entry in entries}
            limits[topic] = TopicLimit(
                max_bytes=min(int(config["max.message.bytes"]), kafka.max_request_size),
                compacted="compact" in config["cleanup.policy"].split(","),
            )
    dlq = limits.get(dead_letter)
    if dlq is not None and dlq.compacted:
        raise FatalError(f"the dead-letter topic {dead_letter} is compacted: it would lose records")
    if dlq is not None and dlq.max_bytes < CLAIM_CHECK_BYTES:
        raise FatalError(
            f"the dead-letter topic {dead_letter} takes records of at most {dlq.max_bytes} "
            f"bytes, less than a claim check may need ({CLAIM_CHECK_BYTES})"
        )
    return limits


def is_record_refusal(exc: BaseException) -> bool:
    """The broker refused a record for what it is, not for the cluster's health."""
    return isinstance(exc, RECORD_REFUSALS) and isinstance(exc, KafkaError)
