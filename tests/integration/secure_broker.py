"""A throwaway broker with SCRAM-SHA-512 and TLS listeners, for the security tests.

* Certificates: a throwaway CA signs the broker's certificate (for 127.0.0.1) and a client
  certificate whose key is encrypted with a password; a second, unrelated CA is the "wrong CA".
* Listeners besides the plain one (used by the tests themselves for topics and reading):
  ``SASL_PLAINTEXT`` and ``SASL_SSL`` with SCRAM-SHA-512, and ``SSL`` requiring a client
  certificate (mutual TLS). Keys and certificates are given to Kafka inline as PEM
  (``ssl.keystore.type=PEM``, KIP-651), so no Java keystore is needed.
* SCRAM credentials are created after start with the AlterUserScramCredentials request
  (KIP-554, API key 51), sent here over a raw socket: aiokafka's admin client lacks it, and this
  works for the local and the Docker broker alike. The salted password is PBKDF2-HMAC-SHA-512
  of the password (RFC 5802 ``Hi``), as Kafka's own ``kafka-configs --add-config`` computes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from worker.devkit.broker import Broker, throwaway_broker
from worker.devkit.broker.probe import _recv_exact

SCRAM_SHA_512 = 2  # the mechanism's id in AlterUserScramCredentials
SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM-SHA-512
JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate that signed the broker and client certificates
    wrong_ca: Path  # an unrelated CA
    client_cert: Path
    client_key: Path  # PKCS#8, encrypted with key_password
    key_password: str
    server_chain_pem: str
    server_key_pem: str
    ca_pem: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    elif server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, wrong_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("logit-router test CA", ca_key, None, ca=True)
    wrong = _cert("some other CA", wrong_key, None, ca=True)
    server = _cert("localhost", server_key, (ca.subject, ca_key), server=True)
    client = _cert("logit-router", client_key, (ca.subject, ca_key))
    key_password = os.urandom(12).hex()
    files = {
        "ca.pem": _pem(ca),
        "wrong-ca.pem": _pem(wrong),
        "client.pem": _pem(client),
        "client-key.pem": client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(key_password.encode()),
        ).decode(),
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    server_key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return Pki(
        ca=directory / "ca.pem",
        wrong_ca=directory / "wrong-ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        key_password=key_password,
        server_chain_pem=_pem(server),
        server_key_pem=server_key_pem,
        ca_pem=_pem(ca),
    )


def listener_config(pki: Pki) -> dict[str, str]:
    """Extra broker properties: SASL_PLAINTEXT, SASL_SSL (SCRAM-SHA-512) and SSL (mutual TLS)."""
    names = ("SASL_PLAINTEXT", "SASL_SSL", "SSL")
    addrs = ",".join(f"{n}://127.0.0.1:{{port:{n.lower()}}}" for n in names)
    config = {
        "listeners": "+" + addrs,
        "advertised.listeners": "+" + addrs,
        "listener.security.protocol.map": "+" + ",".join(f"{n}:{n}" for n in names),
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
    }
    for name in ("sasl_plaintext", "sasl_ssl"):
        config[f"listener.name.{name}.scram-sha-512.sasl.jaas.config"] = JAAS
    for name in ("sasl_ssl", "ssl"):
        prefix = f"listener.name.{name}.ssl."
        config[prefix + "keystore.type"] = "PEM"
        config[prefix + "keystore.certificate.chain"] = pki.server_chain_pem
        config[prefix + "keystore.key"] = pki.server_key_pem
    config["listener.name.ssl.ssl.truststore.type"] = "PEM"
    config["listener.name.ssl.ssl.truststore.certificates"] = pki.ca_pem
    config["listener.name.ssl.ssl.client.auth"] = "required"
    return config


# --- AlterUserScramCredentials (API key 51, v0, flexible encoding) ---------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact(data: bytes) -> bytes:
    return _uvarint(len(data) + 1) + data


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def add_scram_user(host: str, port: int, user: str, password: str) -> None:
    """Create or replace a SCRAM-SHA-512 credential, over a PLAINTEXT listener."""
    salt = os.urandom(32)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
    upsertion = (
        _compact(user.encode())
        + struct.pack(">bi", SCRAM_SHA_512, SCRAM_ITERATIONS)
        + _compact(salt)
        + _compact(salted)
        + b"\x00"  # no tagged fields
    )
    body = _uvarint(1) + _uvarint(2) + upsertion + b"\x00"  # no deletions, one upsertion
    client = b"logit-router-tests"
    header = struct.pack(">hhih", 51, 0, 0x5C4A, len(client)) + client + b"\x00"
    request = header + body
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        resp = _recv_exact(sock, size)
    (correlation,) = struct.unpack(">i", resp[:4])
    assert correlation == 0x5C4A
    _, pos = _read_uvarint(resp, 4)  # response header tagged fields (none expected)
    pos += 4  # throttle time
    count, pos = _read_uvarint(resp, pos)
    assert count - 1 == 1, f"expected one result, got {count - 1}"
    name_len, pos = _read_uvarint(resp, pos)
    pos += name_len - 1
    (error_code,) = struct.unpack(">h", resp[pos : pos + 2])
    pos += 2
    msg_len, pos = _read_uvarint(resp, pos)
    message = resp[pos : pos + msg_len - 1].decode() if msg_len else ""
    if error_code != 0:
        raise RuntimeError(f"AlterUserScramCredentials failed: error {error_code}: {message}")


async def wait_until_authenticates(
    address: str, user: str, password: str, timeout_s: float
) -> None:
    """A new credential reaches the broker through the metadata log: wait until it is used."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = await create_conn(
                host,
                int(port),
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_plain_username=user,
                sasl_plain_password=password,
            )
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"SCRAM user {user} not usable: {exc}") from None
            await asyncio.sleep(0.2)
        else:
            conn.close()
            return


@dataclass(frozen=True)
class SecureBroker:
    broker: Broker
    pki: Pki
    user: str
    password: str

    @property
    def plain(self) -> str:
        return self.broker.bootstrap_servers

    def address(self, listener: str) -> str:
        return self.broker.listeners[listener]


@contextmanager
def secure_broker(directory: Path) -> Iterator[SecureBroker]:
    pki = make_pki(directory)
    user, password = "router", "pw-" + os.urandom(16).hex()
    with throwaway_broker(auto_create_topics=False, extra_config=listener_config(pki)) as broker:
        host, _, port = broker.bootstrap_servers.rpartition(":")
        add_scram_user(host, int(port), user, password)
        # in a thread of its own: asyncio.run must not disturb the test session's event loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = wait_until_authenticates(
                broker.listeners["SASL_PLAINTEXT"], user, password, 60
            )
            pool.submit(asyncio.run, waiting).result()
        yield SecureBroker(broker, pki, user, password)
