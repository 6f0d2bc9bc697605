"""Fault requests from scheduler cases to a server that another process manages.

The scheduler cases run in a pytest process of their own, while the process that started
the server with :mod:`planlagt_conformance.servers` keeps the :class:`ManagedServer`
object. That process serves :class:`ServerControlService` on a Unix socket and passes the
socket path to the cases in ``PLANLAGT_CONFORMANCE_SERVER_CONTROL``. A case sends one
command per connection, as one line, and reads one line back: ``ok`` (followed by the
server's URL for ``url``) or ``error: MESSAGE``.

Commands: ``url``, ``pause`` (SIGSTOP), ``resume`` (SIGCONT), ``stop``, ``start``,
``restart`` (stop, then start on the same port with the same files) and ``kill`` (SIGKILL).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from planlagt_conformance.servers import ManagedServer

__all__ = ["SERVER_CONTROL_ENV", "ServerControl", "ServerControlError", "ServerControlService"]

LOG = logging.getLogger(__name__)

SERVER_CONTROL_ENV = "PLANLAGT_CONFORMANCE_SERVER_CONTROL"

REQUEST_TIMEOUT_S = 60.0
"""How long a case waits for a command's reply: a restart waits for the server to respond again."""

MAX_LINE_BYTES = 4096
COMMANDS = ("url", "pause", "resume", "stop", "start", "restart", "kill")


class ServerControlError(RuntimeError):
    """A fault request could not be sent, or the managing process reported that it failed."""


class ServerControlService:
    """Serves fault requests for ``server`` on a Unix socket in a new private folder, from a daemon thread.

    Use it as a context manager; :attr:`socket_path` is valid inside the block.
    """

    def __init__(self, server: ManagedServer) -> None:
        self.server = server
        self._directory = Path(tempfile.mkdtemp(prefix="planlagt-control-"))
        self.socket_path = self._directory / "control.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._serve, name="server-control", daemon=True)
        self._closing = threading.Event()

    def __enter__(self) -> ServerControlService:
        self._listener.bind(str(self.socket_path))
        self._listener.listen()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._closing.set()
        # A connection of our own wakes the accept() call, so the thread reads the flag and ends.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
                wake.connect(str(self.socket_path))
        except OSError:
            pass
        self._thread.join()
        self._listener.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def environment(self) -> dict[str, str]:
        """Return the environment variables that tell a child process where to send requests."""
        return {SERVER_CONTROL_ENV: str(self.socket_path)}

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                if self._closing.is_set():
                    return
                self._handle(connection)

    def _handle(self, connection: socket.socket) -> None:
        command = _read_line(connection)
        try:
            reply = "ok " + self._execute(command)
        except Exception as exc:
            LOG.warning("Server control command %r failed: %s", command, exc)
            reply = f"error: {type(exc).__name__}: {exc}".replace("\n", " | ")
        connection.sendall(reply.encode() + b"\n")

    def _execute(self, command: str) -> str:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
        if command == "url":
            return self.server.url
        getattr(self.server, command)()
        LOG.info("Server control: %s done for %r", command, self.server)
        return ""


class ServerControl:
    """The client side: sends fault requests to the process that manages the server."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    @classmethod
    def from_environment(cls) -> ServerControl | None:
        """Return a client for the socket named in ``PLANLAGT_CONFORMANCE_SERVER_CONTROL``, or None."""
        path = os.environ.get(SERVER_CONTROL_ENV)
        return cls(path) if path else None

    def url(self) -> str:
        """Return the managed server's backend URL."""
        return self._request("url")

    def pause(self) -> None:
        self._request("pause")

    def resume(self) -> None:
        self._request("resume")

    def stop(self) -> None:
        self._request("stop")

    def start(self) -> None:
        self._request("start")

    def restart(self) -> None:
        self._request("restart")

    def kill(self) -> None:
        self._request("kill")

    def _request(self, command: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(REQUEST_TIMEOUT_S)
                connection.connect(self.socket_path)
                connection.sendall(command.encode() + b"\n")
                reply = _read_line(connection)
        except OSError as exc:
            raise ServerControlError(
                f"could not send {command!r} to the server control socket {self.socket_path}: {exc}"
            ) from exc
        if not reply.startswith("ok"):
            raise ServerControlError(f"server control command {command!r} failed: {reply}")
        return reply[3:]


def _read_line(connection: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_LINE_BYTES:
        chunk = connection.recv(MAX_LINE_BYTES)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
