"""PostgreSQL and PgBouncer servers started for tests, and the choice of server for a test run.

:class:`PostgresServer` runs ``initdb`` into a temporary directory and starts ``postgres``
on a free loopback port, with its Unix socket in that directory. It is configured for
tests: small shared buffers, ``fsync=off``. When the tests run as root, both programs run
as an unprivileged user (``postgres`` when the Debian package created it, else
``nobody``) through ``setpriv``, which replaces itself with the program, so the process
the harness starts is the server itself.

:class:`PgBouncerServer` runs ``pgbouncer`` in front of a :class:`PostgresServer`, with the
pool mode and pool size a test requests.

:func:`postgres_url` and :func:`get_postgres_url` pick the server for a test run: the URL
in ``PLANLAGT_TEST_POSTGRES_URL`` when it is set, else a server started here.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .servers import ManagedServer, ServerSource, ServerStartError, ServerUnavailable, free_port

__all__ = [
    "ADMIN_USER",
    "DATABASE",
    "PASSWORD_USER",
    "POSTGRES_URL_ENV",
    "TEST_USER",
    "PgBouncerServer",
    "PostgresServer",
    "find_postgres_bindir",
    "get_postgres_url",
    "postgres_url",
]

POSTGRES_URL_ENV = "PLANLAGT_TEST_POSTGRES_URL"

ADMIN_USER = "postgres"
"""Superuser made by ``initdb``; trusted on loopback and the Unix socket."""

TEST_USER = "planlagt"
"""Ordinary login role that owns :data:`DATABASE`; trusted on loopback (no password)."""

PASSWORD_USER = "planlagt_password"
"""Ordinary login role that must give a password (scram-sha-256) on loopback."""

DATABASE = "planlagt"

UNPRIVILEGED_USERS = ("postgres", "nobody")
"""Users to run the servers as when the tests run as root, in order of preference."""

RESPOND_TIMEOUT_S = 2
PGBOUNCER_BINARIES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
POOL_MODES = ("session", "transaction", "statement")

# Settings for a small, fast, throwaway server. fsync=off loses data on a machine crash,
# never on a server restart, which is all the tests do.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_wal_size": "64MB",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}


def find_postgres_bindir() -> Path | None:
    """Return the directory holding ``initdb`` and ``postgres``, or None when there is none.

    Looks in ``pg_config --bindir`` first, then in ``/usr/lib/postgresql/*/bin`` (the
    Debian layout; the newest version wins), then on ``PATH``.
    """
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidate = Path(found.stdout.strip())
            if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
                return candidate

    def major_version(path: str) -> int:
        version = Path(path).parent.name
        return int(version) if version.isdigit() else -1

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major_version, reverse=True):
        if Path(directory, "initdb").is_file() and Path(directory, "postgres").is_file():
            return Path(directory)

    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("postgres") is not None:
        return Path(initdb).parent
    return None


def unprivileged_user() -> pwd.struct_passwd | None:
    """Return the user to run servers as when this process is root, or None when it is not root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerStartError(f"running as root, but none of the users {', '.join(UNPRIVILEGED_USERS)} exists")


def as_user(command: list[str], user: pwd.struct_passwd | None) -> list[str]:
    """Return ``command`` run as ``user`` through ``setpriv`` (which execs it), or unchanged for None."""
    if user is None:
        return command
    setpriv = shutil.which("setpriv") or "setpriv"
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *command]


def give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    """Make ``user`` own ``path`` (when not None), so a server running as that user can write there."""
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def child_pids(parent: int) -> list[int]:
    """Return the process ids whose parent is ``parent``, read from ``/proc``."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # The command name in brackets may contain spaces; the parent id follows the state field.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(parent):
            children.append(int(entry))
    return children


class PostgresServer(ManagedServer):
    """A PostgreSQL server on a free loopback port, in its own temporary directory.

    Roles: :data:`ADMIN_USER` (superuser) and :data:`TEST_USER` log in without a password
    on loopback; :data:`PASSWORD_USER` must give :attr:`password`. :data:`DATABASE` is
    owned by :data:`TEST_USER`. ``stop()`` requests a fast shutdown (SIGINT), which ends
    every session. ``pause()`` freezes the postmaster and every backend process, so open
    connections get no response. ``kill()`` ends them all with SIGKILL, as a crash would.
    """

    name = "postgres"

    def __init__(self, *, bindir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        found = Path(bindir) if bindir is not None else find_postgres_bindir()
        if found is None:
            raise ServerUnavailable(_NO_POSTGRES_MESSAGE.format(env=POSTGRES_URL_ENV))
        self.bindir = found
        self.port = free_port()
        self.password = "pw-" + os.urandom(6).hex()
        self._user = unprivileged_user()
        self._roles_created = False
        self._stopped_pids: list[int] = []

    # -- URLs -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """URL of :data:`DATABASE` as :data:`TEST_USER` over TCP (no password)."""
        return self.url_for()

    def url_for(self, user: str = TEST_USER, *, password: str | None = None, database: str = DATABASE) -> str:
        """Return a ``postgresql://`` URL for ``user`` on ``database`` over TCP loopback."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def socket_directory(self) -> Path:
        """The directory holding the server's Unix socket."""
        return self.directory

    def admin_conninfo(self, database: str = DATABASE) -> str:
        """Return a libpq connection string for :data:`ADMIN_USER` over the Unix socket."""
        return f"host={self.socket_directory} port={self.port} user={ADMIN_USER} dbname={database}"

    def admin_connection(self, database: str = DATABASE) -> Any:
        """Return a new autocommit psycopg connection as the superuser (the caller closes it)."""
        import psycopg

        return psycopg.connect(self.admin_conninfo(database), autocommit=True, connect_timeout=RESPOND_TIMEOUT_S)

    # -- Lifecycle ------------------------------------------------------------------

    def _prepare(self, directory: Path) -> None:
        give_to(directory, self._user)
        directory.chmod(0o700)
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(directory / "data"),
            "--username",
            ADMIN_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        result = subprocess.run(as_user(command, self._user), cwd=directory, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed with status {result.returncode}:\n{result.stdout}{result.stderr}")
        hba = directory / "data" / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n",
            encoding="utf-8",
        )
        give_to(hba, self._user)

    def _command(self, directory: Path) -> list[str]:
        settings = {**SERVER_SETTINGS, "port": str(self.port), "unix_socket_directories": str(directory)}
        command = [str(self.bindir / "postgres"), "-D", str(directory / "data")]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return as_user(command, self._user)

    def _responds(self) -> bool:
        import psycopg

        try:
            with self.admin_connection("postgres") as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def start(self) -> None:
        """Start the server, and on the first start create the test roles and database."""
        super().start()
        if not self._roles_created:
            self._create_roles()
            self._roles_created = True

    def _create_roles(self) -> None:
        from psycopg import sql

        with self.admin_connection("postgres") as connection:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(TEST_USER)))
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(PASSWORD_USER), sql.Literal(self.password)
                )
            )
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(TEST_USER))
            )
        with self.admin_connection() as connection:
            connection.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(PASSWORD_USER)
                )
            )

    def stop(self) -> None:
        """Stop the server with a fast shutdown (SIGINT), then as ``ManagedServer.stop`` does.

        PostgreSQL treats SIGTERM as a smart shutdown, which waits for every client to
        disconnect; SIGINT ends the sessions at once.
        """
        with self._lock:
            process = self._process
            if process is not None and process.poll() is None:
                if self._paused:
                    self.resume()
                process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=self.stop_timeout_s)
            super().stop()

    def kill(self) -> None:
        """End the postmaster and every backend process with SIGKILL, as a crash would."""
        with self._lock:
            pid = self.pid
            children = child_pids(pid) if pid is not None else []
            super().kill()
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the postmaster and every backend process with SIGSTOP."""
        with self._lock:
            pid = self._require_pid("pause")
            os.kill(pid, signal.SIGSTOP)
            self._stopped_pids = child_pids(pid)
            for child in self._stopped_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let the processes frozen by :meth:`pause` run again with SIGCONT."""
        with self._lock:
            pid = self._require_pid("resume")
            for child in self._stopped_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGCONT)
            self._stopped_pids = []
            os.kill(pid, signal.SIGCONT)
            self._paused = False


class PgBouncerServer(ManagedServer):
    """A ``pgbouncer`` on a free loopback port in front of ``upstream``.

    ``pool_mode`` is ``session``, ``transaction`` or ``statement``; ``pool_size`` is the
    number of server connections per user and database. Every user logs in without a
    password (``auth_type = trust``), as :data:`TEST_USER` does on the upstream server.
    """

    name = "pgbouncer"

    def __init__(self, upstream: PostgresServer, *, pool_mode: str = "transaction", pool_size: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {', '.join(POOL_MODES)}, not {pool_mode!r}")
        binary = next((path for path in PGBOUNCER_BINARIES if Path(path).is_file()), shutil.which("pgbouncer"))
        if binary is None:
            raise ServerUnavailable(
                "pgbouncer is not installed; install the Debian package, for example `apt-get install pgbouncer`"
            )
        self.binary = binary
        self.upstream = upstream
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = free_port()
        self._user = unprivileged_user()

    @property
    def url(self) -> str:
        """URL of :data:`DATABASE` as :data:`TEST_USER` through the pooler."""
        return f"postgresql://{TEST_USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _prepare(self, directory: Path) -> None:
        give_to(directory, self._user)
        (directory / "userlist.txt").write_text(f'"{TEST_USER}" ""\n"{ADMIN_USER}" ""\n', encoding="utf-8")
        lines = [
            "[databases]",
            f"* = host=127.0.0.1 port={self.upstream.port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {directory / 'userlist.txt'}",
            f"pool_mode = {self.pool_mode}",
            f"default_pool_size = {self.pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 200",
            "ignore_startup_parameters = extra_float_digits",
        ]
        (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for name in ("userlist.txt", "pgbouncer.ini"):
            give_to(directory / name, self._user)

    def _command(self, directory: Path) -> list[str]:
        return as_user([self.binary, str(directory / "pgbouncer.ini")], self._user)

    def _responds(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=RESPOND_TIMEOUT_S) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True


# -- Choosing the PostgreSQL server for a test run ------------------------------------

_NO_POSTGRES_MESSAGE = (
    "no PostgreSQL server for the tests: set {env}=postgresql://USER@HOST:PORT/DB to use a running server, "
    "install PostgreSQL 14 or newer (for example `apt-get install postgresql`, which provides "
    "/usr/lib/postgresql/*/bin/initdb) so the tests start their own, "
    "or start one with `docker compose -f conformance/docker-compose.yml up -d` and set {env} to its URL"
)


_POSTGRES = ServerSource(POSTGRES_URL_ENV, PostgresServer)


def postgres_url() -> contextlib.AbstractContextManager[str]:
    """Return a context manager yielding a PostgreSQL database URL for a test run; it stops any server it started.

    Order: the ``PLANLAGT_TEST_POSTGRES_URL`` environment variable when set; else a server
    started here from the binaries :func:`find_postgres_bindir` finds. Raises
    ``ServerUnavailable`` naming every way to provide one when neither exists.
    """
    return _POSTGRES.url()


def get_postgres_url() -> str:
    """Return the URL of a PostgreSQL database for this process, in the order of :func:`postgres_url`.

    A server started here is shared by every later call and stopped when the interpreter
    exits (``atexit``). Raises ``ServerUnavailable`` naming every way to provide one.
    """
    return _POSTGRES.shared_url()
