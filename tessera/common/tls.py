"""TLS and mutual TLS credentials from PEM files named in configuration."""

from __future__ import annotations

from pathlib import Path

import grpc

from tessera.common.errors import InvalidSpec

__all__ = ["channel_credentials", "server_credentials"]


def _read_optional(path: Path | None, what: str) -> bytes | None:
    return None if path is None else _read(path, what)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidSpec(f"cannot read the {what} {path}: {exc.strerror}") from exc


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS for a server (None = plaintext); ``client_ca`` makes it mutual TLS.

    With ``client_ca``, clients must present a certificate that CA signed.

    Raises:
        InvalidSpec: only one of cert and key given, or a file cannot be read.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise InvalidSpec("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise InvalidSpec("TLS needs both --tls-cert and --tls-key")
    private_key, chain = _read(key, "TLS key"), _read(cert, "TLS certificate")
    ca = _read_optional(client_ca, "client CA")
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials | None:
    """TLS for a client (None = plaintext): trust ``ca``; present ``cert``/``key`` for mTLS.

    Raises:
        InvalidSpec: a file cannot be read, or only one of cert and key given.
    """
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise InvalidSpec("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_optional(ca, "CA certificate"),
        private_key=_read_optional(key, "TLS key"),
        certificate_chain=_read_optional(cert, "TLS certificate"),
    )
