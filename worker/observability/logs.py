"""Logging, configured once by the CLI: readable text for people, one JSON object a line for
log pipelines. Modules log through ``logging.getLogger(__name__)`` with %-style arguments."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class RetriedLookupIsAWarning(logging.Filter):
    """aiokafka logs a failed group-coordinator lookup at ERROR and then, for a retriable
    error, simply retries it: a new cluster answers ``GroupCoordinatorNotAvailable`` until it
    has created ``__consumer_offsets``. A condition that is retried and passes is a warning
    (the Java client logs it at INFO or DEBUG), not an error to page someone for; a lookup
    that fails for good stays an ERROR."""

    MESSAGE = "Group Coordinator Request failed: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if (
            record.levelno == logging.ERROR
            and record.msg == self.MESSAGE
            and args
            and getattr(args[0], "retriable", False)
        ):
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            # Re-levelled, it must still clear the level the operator set (``log.level``).
            return logging.getLogger(record.name).isEnabledFor(logging.WARNING)
        return True


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    if not any(isinstance(f, RetriedLookupIsAWarning) for f in coordinator.filters):
        coordinator.addFilter(RetriedLookupIsAWarning())
