"""Secrets in the config: from the environment or from a file (a Kubernetes or Docker secret),
typed ``SecretStr``, and never shown by a repr, a dump or a config error."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from worker.core.settings import ConfigError, load_settings

SECRET = "s3cr3t-Pa55-" + os.urandom(6).hex()
SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"}
TOPICS: dict[str, dict[str, object]] = {"t": {}}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LOGIT_ROUTER_"):
            monkeypatch.delenv(key)


def secret_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret"
    path.write_text(text, newline="")
    return path


@pytest.mark.parametrize("text", [SECRET, SECRET + "\n", SECRET + "\r\n"])
def test_password_file_is_read_without_its_line_break(tmp_path: Path, text: str) -> None:
    path = secret_file(tmp_path, text)
    s = load_settings(None, topics=TOPICS, kafka={**SASL, "sasl_password_file": str(path)})
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == SECRET


def test_password_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(tmp_path, SECRET + "\n")
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__SASL_PASSWORD_FILE", str(path))
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__SSL_KEY_PASSWORD_FILE", str(path))
    s = load_settings(None, topics=TOPICS, kafka=SASL)
    assert s.kafka.sasl_password is not None and s.kafka.ssl_key_password is not None
    assert s.kafka.sasl_password.get_secret_value() == SECRET
    assert s.kafka.ssl_key_password.get_secret_value() == SECRET


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__SASL_PASSWORD", SECRET)
    s = load_settings(None, topics=TOPICS, kafka=SASL)
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == SECRET


def test_secrets_are_masked_in_repr_and_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__SASL_PASSWORD", SECRET)
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__SSL_KEY_PASSWORD", SECRET)
    s = load_settings(None, topics=TOPICS, kafka=SASL)
    for shown in (repr(s), str(s), s.model_dump_json(), str(s.model_dump(mode="json"))):
        assert SECRET not in shown
    assert SECRET not in s.config_version


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET)
    kafka = {**SASL, "sasl_password": SECRET, "sasl_password_file": str(path)}
    with pytest.raises(ConfigError) as err:
        load_settings(None, topics=TOPICS, kafka=kafka)
    assert "sasl_password or sasl_password_file, not both" in str(err.value)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read it (No such file or directory)"), ("", "the file is empty")],
)
def test_unreadable_password_file_is_named(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "missing"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_settings(None, topics=TOPICS, kafka={**SASL, "ssl_key_password_file": str(path)})
    assert f"ssl_key_password_file {path}: {problem}" in str(err.value)


@pytest.mark.parametrize(
    "kafka",
    [
        {**SASL, "sasl_password": [SECRET]},  # wrong type: the value would be shown
        {**SASL, "sasl_pasword": SECRET},  # misspelt: an unknown key
        {**SASL, "sasl_passwd": SECRET},
        {"security_protocol": "SASL_SSL", "sasl_password": SECRET},  # incomplete SASL settings
        {**SASL, "sasl_password": SECRET, "connect_timeout_s": -1},
    ],
)
def test_config_errors_never_show_a_secret(kafka: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, topics=TOPICS, kafka=kafka)
    assert SECRET not in str(err.value)
    assert "kafka" in str(err.value)


def test_missing_tls_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError) as err:
        load_settings(None, topics=TOPICS, kafka={"ssl_cafile": str(missing)})
    assert f"kafka.ssl_cafile = '{missing}'" in str(err.value)


def test_client_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    key = secret_file(tmp_path, "not really a key")
    with pytest.raises(ConfigError) as err:
        load_settings(None, topics=TOPICS, kafka={"ssl_keyfile": str(key)})
    assert "ssl_keyfile needs ssl_certfile" in str(err.value)


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key, as PEM files."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"ssl_cafile": "text"}, "ssl_cafile {text}: no CA certificate"),
        ({"ssl_certfile": "text"}, "ssl_certfile {text}: no certificate"),
        ({"ssl_keyfile": "text"}, "ssl_keyfile {text}: no private key"),
        ({"ssl_keyfile": "other_key"}, "ssl_keyfile {other_key}: its private key is not the"),
        ({"ssl_keyfile": None}, "ssl_certfile {cert}: no private key"),  # nor in the cert's file
    ],
)
def test_a_tls_file_that_does_not_load_is_a_config_error_naming_it(
    tmp_path: Path, bad: dict[str, str | None], named: str
) -> None:
    # It was exit 1 at the first connection, "cannot load kafka.ssl_cafile, ssl_certfile or
    # ssl_keyfile ([SSL] PEM lib ...)", whichever of the three it was.
    cert, key = _certificate(tmp_path, "client")
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    paths = {"text": text, "other_key": _certificate(tmp_path, "other")[1], "cert": cert}
    files: dict[str, Path | None] = {"ssl_cafile": cert, "ssl_certfile": cert, "ssl_keyfile": key}
    files.update({field: None if v is None else paths[v] for field, v in bad.items()})
    kafka = {field: str(path) for field, path in files.items() if path is not None}
    with pytest.raises(ConfigError) as err:
        load_settings(None, topics=TOPICS, kafka={"security_protocol": "SSL", **kafka})
    assert named.format(**paths) in str(err.value)


def test_tls_files_that_load_are_accepted(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "client")
    s = load_settings(
        None,
        topics=TOPICS,
        kafka={
            "security_protocol": "SSL",
            "ssl_cafile": str(cert),
            "ssl_certfile": str(cert),
            "ssl_keyfile": str(key),
        },
    )
    assert s.kafka.ssl_keyfile == key


def test_a_bad_tls_file_stops_the_worker_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli.main import main

    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    config = tmp_path / "c.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "127.0.0.1:1"\nsecurity_protocol = "SSL"\n'
        f'ssl_certfile = "{text}"\nssl_keyfile = "{text}"\n[http]\nenabled = false\n[topics.t]\n'
    )
    # `run` sets its own signal handlers: not in the test process.
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"ssl_certfile {text}: no certificate" in err
