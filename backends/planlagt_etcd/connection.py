"""The etcd client of one backend: built on first use, authenticated, failed over, closed once.

It wraps etcd-sdk-python's ``MultiEndpointEtcd3Client`` (``pyetcd``, checked with 0.0.7)
and works around three of its behaviours:

- Its own ``user``/``password`` handling attaches the token as gRPC call credentials,
  which gRPC does not send over a plain (non-TLS) channel, and it never renews the
  token. Here the token comes from etcd's ``Authenticate`` call and goes out as the
  ``token`` metadata the client adds to every request (its ``metadata`` attribute), on
  plain and TLS channels alike. etcd's simple tokens expire (after 5 minutes by default)
  and a restart invalidates them. A rejected token is renewed once and the request
  repeated, which is safe because etcd rejected the request before executing it.
- Its single-endpoint client marks the endpoint failed for 300 s after any error and then
  refuses every request. Here each endpoint is marked failed for
  :data:`ENDPOINT_RETRY_S` at most, and never when it is the only one.
- It retries nothing. This module repeats a request only where etcd cannot have run it:
  after the token renewal, and on the next endpoint when gRPC could not connect to the
  current one (at most once per endpoint). After any other failure the next request goes
  to the next endpoint that has not just failed, and the caller decides whether to try
  again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc

from planlagt_core.errors import BackendError, BackendUnavailable, ConfigurationError

from .errors import UNKNOWN_OUTCOME_CODES, TokenExpired, never_sent, translate_errors
from .options import EtcdOptions

__all__ = ["ENDPOINT_RETRY_S", "EtcdConnection"]

LOG = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT_RETRY_S = 2.0
"""How long a failed endpoint is skipped while the cluster URL names other endpoints."""

MAX_RECONNECT_BACKOFF_MS = 1000
"""Maximum pause of gRPC between attempts to reconnect to an endpoint (its default is 120 s)."""

MAX_RECEIVE_BYTES = 64 * 1024 * 1024
"""Largest response accepted (gRPC's default is 4 MiB); long key ranges are read in pages anyway."""

# gRPC also uses grpc.min_reconnect_backoff_ms as the deadline of each connection attempt,
# so it keeps its default (20 s): a short value fails connections to a busy server.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
]


class EtcdConnection:
    """One ``pyetcd`` client for a backend, safe to share between threads.

    ``run(operation, call)`` calls ``call(client)`` and translates its errors; the client
    is built (and authenticated) on the first call. ``close()`` closes its channels; later
    calls raise ``BackendError``.
    """

    def __init__(self, options: EtcdOptions, url: str) -> None:
        self._options = options
        self._url = url
        self._client: pyetcd.MultiEndpointEtcd3Client | None = None
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        """Held while one thread renews the token, so other threads wait for it instead of asking again."""
        self._closed = False

    @property
    def endpoint_in_use(self) -> str | None:
        """``host:port`` of the endpoint requests go to now, or None before the first request."""
        client = self._client
        if client is None:
            return None
        endpoint = client.endpoint_in_use
        return None if endpoint is None else str(endpoint.netloc)

    def run(self, operation: str, call: Callable[[pyetcd.MultiEndpointEtcd3Client], T]) -> T:
        """Return ``call(client)``, with client errors translated as ``translate_errors`` describes.

        A request that could not be sent because the endpoint refused the connection goes
        to the next endpoint, once per endpoint of the URL.
        """
        for _ in range(len(self._options.endpoints) - 1):
            try:
                return self._run_authenticated(operation, call)
            except BackendUnavailable as exc:
                if not never_sent(exc):
                    raise
                LOG.warning(
                    "etcd endpoint %s of %s cannot be reached during %s; sending it to the next endpoint",
                    self.endpoint_in_use, self._url, operation,
                )  # fmt: skip
        return self._run_authenticated(operation, call)

    def _run_authenticated(self, operation: str, call: Callable[[pyetcd.MultiEndpointEtcd3Client], T]) -> T:
        client = self._ensure_client(operation)
        token = client.metadata
        try:
            with translate_errors(self._url, operation):
                return call(client)
        except TokenExpired:
            self._renew_token(client, token, operation)

        try:
            with translate_errors(self._url, operation):
                return call(client)
        except TokenExpired as exc:
            raise BackendError(
                f"etcd at {self._url} rejected a token it had just issued during {operation}", backend=self._url
            ) from exc

    def close(self) -> None:
        """Close the client's channels. Safe to call more than once."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- Building the client --------------------------------------------------------

    def _ensure_client(self, operation: str) -> pyetcd.MultiEndpointEtcd3Client:
        with self._lock:
            if self._closed:
                raise BackendError(f"backend {self._url} is closed; create a new one with planlagt_core.connect()")
            if self._client is None:
                self._client = self._build_client()
            client = self._client
        if self._options.username is not None and client.metadata is None:
            self._renew_token(client, None, operation)
        return client

    def _build_client(self) -> pyetcd.MultiEndpointEtcd3Client:
        credentials = self._channel_credentials()
        retry_s = ENDPOINT_RETRY_S if len(self._options.endpoints) > 1 else 0.0
        endpoints = [
            pyetcd.Endpoint(
                host,
                port,
                secure=credentials is not None,
                creds=credentials,
                time_retry=retry_s,
                opts=CHANNEL_OPTIONS,
            )
            for host, port in self._options.endpoints
        ]
        client = pyetcd.MultiEndpointEtcd3Client(endpoints=endpoints, timeout=self._options.timeout_s, failover=True)
        LOG.debug("Created etcd client for %s", self._url)
        return client

    def _channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self._options.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self._read_pem("cacert", self._options.cacert),
            private_key=self._read_pem("key", self._options.key),
            certificate_chain=self._read_pem("cert", self._options.cert),
        )

    def _read_pem(self, option: str, path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {option} file {path!r} of {self._url}: {exc.strerror}") from exc

    # -- Authentication -------------------------------------------------------------

    def _renew_token(self, client: pyetcd.MultiEndpointEtcd3Client, stale: Any, operation: str) -> None:
        """Authenticate and store the new token, unless another thread replaced ``stale`` already."""
        with self._auth_lock:
            if client.metadata is not stale and client.metadata is not None:
                return
            request = etcdrpc.AuthenticateRequest(name=self._options.username, password=self._options.password)
            with translate_errors(self._url, f"authentication before {operation}"):
                try:
                    answer = client.authstub.Authenticate(request, self._options.timeout_s)
                except grpc.RpcError as exc:
                    # pyetcd marks endpoints failed only for its own calls; do it here so the
                    # next attempt goes to another endpoint.
                    if hasattr(exc, "code") and exc.code() in UNKNOWN_OUTCOME_CODES and client.endpoint_in_use:
                        client.endpoint_in_use.fail()
                    raise
            client.metadata = (("token", answer.token),)
        LOG.debug("Authenticated to etcd at %s as %r", self._url, self._options.username)
