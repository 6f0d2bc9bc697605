"""Errors for bad input, and redaction of backend passwords everywhere they could leak.

Every invalid value must raise a ``ConfigurationError`` subclass before anything runs,
with a message that names the value. A password in a backend URL must never show in
``repr``/``str`` of a backend, in error messages, in log records at DEBUG, nor on the
standard error of ``planlagt run``. The redaction cases point the Redis backend at a
loopback port where nothing listens, so every connection is refused.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from planlagt_conformance.servers import free_port
from planlagt_memory import MemoryBackend

from planlagt_core import connect
from planlagt_core.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidJob,
    InvalidSchedule,
    InvalidURL,
    UnknownBackend,
)
from planlagt_core.plugins import installed_schemes
from planlagt_core.schedule import parse_schedule
from planlagt_core.scheduler import Scheduler

SENTINEL = "SENTINEL-xyz-5d41"
POLL_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.05
CLI_STOP_TIMEOUT_S = 30.0

# The installed ``planlagt`` script may not be on PATH (a virtualenv run without activating it).
PLANLAGT = [sys.executable, "-c", "import sys; from planlagt_core.cli import main; sys.exit(main())"]


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = POLL_DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns a true value; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def noop() -> None:
    pass


def closed_port_url() -> str:
    """Return a Redis URL with the sentinel password, on a loopback port where nothing listens."""
    return f"redis://user:{SENTINEL}@127.0.0.1:{free_port()}/0"


# -- Schedules ---------------------------------------------------------------------------

INVALID_SCHEDULES = [
    ("61 * * * *", "61"),
    ("* * *", "3"),
    ("@every 0s", "0s"),
    ("@every -5m", "-5m"),
    ("@fortnightly", "@fortnightly"),
]


@pytest.mark.fast
@pytest.mark.parametrize(("expression", "named"), INVALID_SCHEDULES, ids=[case[0] for case in INVALID_SCHEDULES])
def test_schedule_invalid_raises(expression: str, named: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule(expression)

    assert isinstance(caught.value, ConfigurationError)
    assert repr(expression) in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.fast
@pytest.mark.parametrize(("expression", "named"), INVALID_SCHEDULES, ids=[case[0] for case in INVALID_SCHEDULES])
def test_add_job_invalid_schedule(expression: str, named: str) -> None:
    scheduler = Scheduler(MemoryBackend())

    with pytest.raises(InvalidSchedule) as caught:
        scheduler.add_job(noop, expression, name="nightly")

    assert named in str(caught.value)
    assert scheduler.jobs == {}


@pytest.mark.fast
def test_unknown_time_zone_named() -> None:
    scheduler = Scheduler(MemoryBackend())

    with pytest.raises(InvalidSchedule) as caught:
        scheduler.add_job(noop, "0 3 * * *", name="nightly", tz="Mars/Olympus_Mons")

    assert isinstance(caught.value, ConfigurationError)
    assert "'Mars/Olympus_Mons'" in str(caught.value)


# -- Jobs and scheduler settings ---------------------------------------------------------


@pytest.mark.fast
def test_duplicate_job_name_rejected() -> None:
    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(noop, "@daily", name="nightly")

    with pytest.raises(InvalidJob) as caught:
        scheduler.add_job(noop, "@hourly", name="nightly")

    assert "'nightly'" in str(caught.value)
    assert scheduler.jobs["nightly"].schedule.expression == "@daily"


@pytest.mark.fast
def test_duplicate_default_name_rejected() -> None:
    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(noop, "@daily")

    with pytest.raises(InvalidJob) as caught:
        scheduler.add_job(noop, "@hourly")

    assert noop.__qualname__ in str(caught.value)


@pytest.mark.fast
@pytest.mark.parametrize("value", [42, "not a function", None], ids=["int", "str", "None"])
def test_non_callable_rejected(value: object) -> None:
    scheduler = Scheduler(MemoryBackend())

    with pytest.raises(InvalidJob) as caught:
        scheduler.add_job(value, "@daily", name="nightly")  # type: ignore[arg-type]

    assert repr(value) in str(caught.value)


@pytest.mark.fast
def test_scheduler_heartbeat_not_shorter() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Scheduler(MemoryBackend(), lease_ttl_s=3.0, heartbeat_s=3.0)

    assert "heartbeat_s=3.0" in str(caught.value)
    assert "lease_ttl_s=3.0" in str(caught.value)


@pytest.mark.fast
def test_job_heartbeat_not_shorter() -> None:
    scheduler = Scheduler(MemoryBackend())

    with pytest.raises(InvalidJob) as caught:
        scheduler.add_job(noop, "@daily", name="nightly", lease_ttl_s=2.0, heartbeat_s=5.0)

    assert "heartbeat_s=5.0" in str(caught.value)
    assert "lease_ttl_s=2.0" in str(caught.value)
    assert "'nightly'" in str(caught.value)


@pytest.mark.fast
def test_scheduler_ttl_below_minimum() -> None:
    # Building the Redis backend does not connect, so the check needs no server.
    backend = connect(f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(ConfigurationError) as caught:
        Scheduler(backend, lease_ttl_s=0.001, heartbeat_s=0.0005)

    assert "0.001 s" in str(caught.value)
    assert str(backend.capabilities.min_ttl_s) in str(caught.value)


@pytest.mark.fast
def test_job_ttl_below_minimum() -> None:
    scheduler = Scheduler(MemoryBackend())
    minimum = MemoryBackend.capabilities.min_ttl_s

    with pytest.raises(InvalidJob) as caught:
        scheduler.add_job(noop, "@daily", name="nightly", lease_ttl_s=0.0002, heartbeat_s=0.0001)

    assert "0.0002 s" in str(caught.value)
    assert f"{minimum} s" in str(caught.value)
    assert "'nightly'" in str(caught.value)


# -- Backend URLs and plugins ------------------------------------------------------------

INVALID_URLS = [
    ("redis://h:99999", "'99999'"),
    ("redis://h :6379", "whitespace"),
    ("redis:// h:6379", "whitespace"),
    ("redis://h:6379?colour=blue", "'colour'"),
]


@pytest.mark.fast
@pytest.mark.parametrize(("url", "named"), INVALID_URLS, ids=["port", "space", "leading-space", "option"])
def test_url_invalid_raises(url: str, named: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        connect(url)

    assert isinstance(caught.value, ConfigurationError)
    assert repr(url) in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.fast
def test_url_unknown_option_lists_accepted() -> None:
    with pytest.raises(InvalidURL) as caught:
        connect("redis://h:6379?colour=blue")

    assert "prefix" in str(caught.value)
    assert "db" in str(caught.value)


@pytest.mark.fast
def test_unknown_scheme_lists_installed() -> None:
    with pytest.raises(UnknownBackend) as caught:
        connect("nosuchbackend://h:1")

    message = str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
    assert "'nosuchbackend'" in message
    for scheme in ("redis", "sqlite", "memory", *installed_schemes()):
        assert scheme in message


# Connects to etcd:// in a process where the etcd client library (pyetcd) cannot be imported.
MISSING_ETCD_CLIENT = textwrap.dedent(
    """
    import sys

    sys.modules["pyetcd"] = None

    from planlagt_core import connect
    from planlagt_core.errors import PluginLoadError, UnknownBackend

    try:
        connect("etcd://127.0.0.1:2379")
    except (UnknownBackend, PluginLoadError) as exc:
        print(type(exc).__name__)
        print(exc)
    """
)


@pytest.mark.fast
def test_etcd_without_client_names_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", MISSING_ETCD_CLIENT], capture_output=True, text=True, timeout=60, check=False
    )
    error_type, _, message = result.stdout.partition("\n")

    assert result.returncode == 0, result.stderr[-2000:]
    assert error_type in ("UnknownBackend", "PluginLoadError")
    assert 'pip install "planlagt[etcd]"' in message
    assert "'etcd'" in message


# -- Redaction ---------------------------------------------------------------------------


@pytest.mark.fast
def test_backend_repr_redacted() -> None:
    url = closed_port_url()
    backend = connect(url)

    shown = [repr(backend), str(backend), backend.url, repr(getattr(backend, "options", None))]

    for text in shown:
        assert SENTINEL not in text
    assert "user:***@127.0.0.1" in backend.url


@pytest.mark.fast
def test_scheduler_repr_redacted() -> None:
    scheduler = Scheduler(closed_port_url(), instance_id="redaction")

    assert SENTINEL not in repr(scheduler)
    assert "***" in repr(scheduler)


@pytest.mark.fast
@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SENTINEL}@h:99999/0",
        f"redis://user:{SENTINEL}@h:6379/0?colour=blue",
        f"redis://127.0.0.1:6379/0?password={SENTINEL}",
        f"nosuchbackend://user:{SENTINEL}@h:1",
    ],
    ids=["port", "option", "query-password", "scheme"],
)
def test_invalid_url_error_redacted(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        connect(url)

    assert SENTINEL not in str(caught.value)
    assert SENTINEL not in repr(caught.value)


def exception_text(exc: BaseException) -> str:
    """Return everything a traceback printer shows for ``exc``, its causes and their reprs."""
    parts = ["".join(traceback.format_exception(exc))]
    current: BaseException | None = exc
    while current is not None:
        parts.extend([str(current), repr(current), repr(getattr(current, "args", ()))])
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.fast
def test_connection_error_redacted() -> None:
    backend = connect(closed_port_url())

    with pytest.raises(BackendUnavailable) as caught:
        backend.acquire("job:nightly", 5.0)

    assert "user:***@127.0.0.1" in str(caught.value)
    assert SENTINEL not in exception_text(caught.value)


@pytest.mark.fast
def test_read_error_redacted() -> None:
    backend = connect(closed_port_url())

    with pytest.raises(BackendUnavailable) as caught:
        backend.list_instances()

    assert SENTINEL not in exception_text(caught.value)


@pytest.mark.fast
def test_debug_logs_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    scheduler = Scheduler(closed_port_url(), instance_id="redaction", lease_ttl_s=1.5, heartbeat_s=0.2)
    scheduler.add_job(noop, "* * * * * *", name="every-second")

    scheduler.start()
    try:
        wait_for(
            lambda: sum("Heartbeat of instance" in r.getMessage() for r in caplog.records) >= 2,
            "two failed heartbeats to be logged",
        )
    finally:
        scheduler.stop(grace_s=0.0)

    assert "user:***@127.0.0.1" in caplog.text
    assert SENTINEL not in caplog.text
    for record in caplog.records:
        assert SENTINEL not in record.getMessage()
        assert SENTINEL not in repr(record.args)
        if record.exc_info is not None and record.exc_info[1] is not None:
            assert SENTINEL not in exception_text(record.exc_info[1])


CLI_SERVICE = textwrap.dedent(
    """
    from planlagt_core.scheduler import Scheduler

    scheduler = Scheduler(instance_id="redaction-cli", lease_ttl_s=1.5, heartbeat_s=0.2)


    @scheduler.job("* * * * * *", name="every-second")
    def every_second() -> None:
        pass
    """
)


@pytest.mark.fast
def test_cli_stderr_redacted(tmp_path: Path) -> None:
    (tmp_path / "redaction_service.py").write_text(CLI_SERVICE, encoding="utf-8")
    stderr_path = tmp_path / "stderr.txt"
    stdout_path = tmp_path / "stdout.txt"
    env = {key: value for key, value in os.environ.items() if key != "PLANLAGT_BACKEND"}
    command = [
        *PLANLAGT, "--log-level", "DEBUG",
        "run", "redaction_service:scheduler", "--backend", closed_port_url(),
    ]  # fmt: skip

    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
        try:
            wait_for(
                lambda: (
                    stderr_path.read_text(errors="replace").count("Heartbeat of instance") >= 2
                    or process.poll() is not None
                ),
                "planlagt run to log two failed heartbeats or exit",
            )
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=CLI_STOP_TIMEOUT_S)

    output = stdout_path.read_text(errors="replace") + stderr_path.read_text(errors="replace")
    assert "user:***@127.0.0.1" in output
    assert SENTINEL not in output
