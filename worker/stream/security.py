"""Telling a wrong password or an untrusted certificate apart from brokers that are not up yet.

aiokafka turns every failed bootstrap into ``KafkaConnectionError("Unable to bootstrap from …")``
and only logs the cause. Retrying that for ``kafka.connect_timeout_s`` is right while a broker
starts, and pointless when the password is wrong or the broker's certificate is not trusted:
those stay wrong. So, after a failed start on a SASL or TLS connection, one connection is opened
by hand to learn why; an authentication or TLS failure is final and named in one line.

No message built here contains a secret: the password and key password are never formatted;
the broker's own error text (which names the mechanism, never the credentials) may be quoted.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from worker.core.kafka_settings import KafkaSettings

PROBE_TIMEOUT_MS = 10_000  # one connection attempt; the client's own attempt just failed


async def permanent_failure(kafka: KafkaSettings, options: Mapping[str, Any]) -> str | None:
    """Why the brokers refuse these credentials or this TLS setup, or None if nothing final is
    wrong (unreachable, starting, …: worth retrying). ``options`` are the client's connection
    options (``worker.stream.connections.connection_options``)."""
    if kafka.security_protocol == "PLAINTEXT":
        return None  # nothing to be refused for
    for host, port, _ in collect_hosts(kafka.bootstrap_servers, randomize=False):
        where = f"{host}:{port}"
        try:
            conn = await create_conn(
                host,
                port,
                client_id=options.get("client_id", "logit-router"),
                request_timeout_ms=min(kafka.request_timeout_ms, PROBE_TIMEOUT_MS),
                ssl_context=options.get("ssl_context"),
                security_protocol=kafka.security_protocol,
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
        except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
            return (
                f"Kafka authentication failed for user {kafka.sasl_username!r} "
                f"({kafka.sasl_mechanism}) at {where}: {_one_line(exc)}; "
                "check kafka.sasl_username and the password"
            )
        except UnsupportedSaslMechanismError:
            return (
                f"Kafka at {where} does not offer {kafka.sasl_mechanism} on this listener; "
                "check kafka.sasl_mechanism"
            )
        except IllegalSaslStateError:
            return (
                f"Kafka at {where} does not expect SASL: is it a {kafka.security_protocol} "
                "listener? check kafka.bootstrap_servers and kafka.security_protocol"
            )
        except ssl.SSLCertVerificationError as exc:
            return (
                f"TLS: the certificate of {where} is not trusted ({exc.verify_message}); "
                "check kafka.ssl_cafile"
            )
        except ssl.SSLError as exc:
            problem = _tls_problem(exc, where)
            if problem is not None:
                return problem
        except (OSError, KafkaError, TimeoutError) as exc:
            # aiokafka reports a TLS alert received after the handshake (e.g. the broker wants
            # a client certificate) as a closed connection; the TLS error is its cause.
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                problem = _tls_problem(cause, where)
                if problem is not None:
                    return problem
        else:
            conn.close()
            return None
    return None


def _tls_problem(exc: ssl.SSLError, where: str) -> str | None:
    """A TLS failure that retrying will not cure, or None (the peer just hung up)."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return None  # the broker closed mid-handshake: it may be stopping or starting
    reason = (exc.reason or _one_line(exc)).lower().replace("_", " ")
    hint = ""
    if "certificate" in reason:
        hint = "; the broker refused our client certificate or wants one: check kafka.ssl_certfile"
    return f"TLS handshake with {where} failed: {reason}{hint}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
