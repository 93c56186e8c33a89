"""TLS for both programs: the collector's server context and the agent's client context.

Built once at start from the config; a certificate that cannot be used is a
one-line :class:`StartupError`, not an OpenSSL traceback.
"""

from __future__ import annotations

import ssl

from sensor_edge.config.model import AgentConfig, ServerTLS
from sensor_edge.runtime.service import StartupError


def server_context(tls: ServerTLS) -> ssl.SSLContext:
    """The collector's side: its certificate, and the CA of its agents' certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, tls.cert, tls.key, "listen.tls")
    if tls.client_ca is not None:
        _load_trust(context, tls.client_ca, "listen.tls.client_ca")
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no connection
    return context


def client_context(config: AgentConfig) -> ssl.SSLContext:
    """The agent's side: whom to trust (`collector.ca`, else the system's CAs), and who we are."""
    if config.ca is not None:
        # A LAN CA replaces the public ones: nothing else may vouch for the collector.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks certificate and host name
        _load_trust(context, config.ca, "collector.ca")
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert is not None:
        _load_identity(context, config.cert, config.key, "collector.cert")
    return context


def _load_identity(context: ssl.SSLContext, cert: str, key: str | None, where: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise StartupError(f"{where}: cannot use certificate {cert!r} with key {key!r}: "
                           f"{_reason(e)}") from None


def _load_trust(context: ssl.SSLContext, ca: str, where: str) -> None:
    try:
        context.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as e:
        raise StartupError(f"{where}: cannot load CA certificates from {ca!r}: {_reason(e)}") \
            from None


def _reason(error: Exception) -> str:
    """OpenSSL's short reason ("key values mismatch") rather than its whole error string."""
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None)
    return str(reason or error).lower().replace("_", " ")
