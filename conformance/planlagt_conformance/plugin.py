"""pytest plugin with the fixtures of planlagt's backend conformance suite.

Nothing loads it on its own: opt in with ``pytest -p planlagt_conformance.plugin`` or
``pytest_plugins = ["planlagt_conformance.plugin"]`` in a top-level ``conftest.py``. It adds

``--backend-url URL``
    The backend to test. Give it more than once to test several backends in one run.
    Without it, the whitespace-separated URLs in ``PLANLAGT_CONFORMANCE_URL`` are used.

and the fixtures ``backend_url``, ``capabilities``, ``timing``, ``backend_factory``,
``backend`` and ``other_prefix_backend``. Every backend a test gets comes from the URL with
a fresh random ``prefix`` option (added after the URL's own prefix, if it has one), so
tests are isolated from each other on one shared server. Backends are closed after each
test, and then the test fails if threads or file descriptors it opened are still open.

The suite writes data under its random prefixes and does not delete it all: point it at
a server or database kept for testing.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import pytest

from planlagt_conformance.cases._support import Timing
from planlagt_core.backend import Backend, Capabilities
from planlagt_core.plugins import load_backend_class
from planlagt_core.url import parse_url, redact_url

__all__ = [
    "URL_ENV",
    "BackendFactory",
    "backend_class_for",
    "open_backend",
    "register_test_backend",
    "unregister_test_backend",
    "with_prefix",
]

LOG = logging.getLogger(__name__)

URL_ENV = "PLANLAGT_CONFORMANCE_URL"
LEAK_GRACE_S = 5.0
"""How long threads and file descriptors may take to go away after ``close()`` returns."""

FD_DIRECTORIES = ("/proc/self/fd", "/dev/fd")

_test_backends: dict[str, type[Backend]] = {}
_call_report_key = pytest.StashKey[pytest.TestReport]()


# -- Building backends ------------------------------------------------------------


def register_test_backend(scheme: str, backend_class: type[Backend]) -> None:
    """Make URLs with ``scheme`` build ``backend_class`` in this process, without an entry point.

    Meant for testing backends and the suite itself. It overrides an installed plugin of
    the same scheme. Worker processes that cases start find the class again by its
    module and name, so it must be importable there for multi-process cases.
    """
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise TypeError(f"register_test_backend needs a Backend subclass for {scheme!r}, not {backend_class!r}")
    _test_backends[scheme.lower()] = backend_class


def unregister_test_backend(scheme: str) -> None:
    """Forget a class registered with :func:`register_test_backend`. Unknown schemes are ignored."""
    _test_backends.pop(scheme.lower(), None)


def backend_class_for(url: str) -> type[Backend]:
    """Return the backend class for ``url``: a registered test backend, else the installed plugin.

    Raises ``InvalidURL``, ``UnknownBackend`` or ``PluginLoadError`` as ``planlagt_core.connect`` does.
    """
    scheme = parse_url(url).scheme
    registered = _test_backends.get(scheme)
    if registered is not None:
        return registered
    return load_backend_class(scheme)


def open_backend(url: str) -> Backend:
    """Build a backend for ``url`` without connecting (backends connect on first use)."""
    return backend_class_for(url).from_url(parse_url(url))


def with_prefix(url: str, prefix: str) -> str:
    """Return ``url`` with its ``prefix`` option set to ``prefix``, other options unchanged."""
    base, _, query = url.partition("?")
    options = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True) if name != "prefix"]
    options.append(("prefix", prefix))
    return f"{base}?{urlencode(options)}"


def new_prefix(url: str) -> str:
    """Return a random prefix, appended to the URL's own prefix so server ACLs on it still match."""
    own = dict(parse_qsl(url.partition("?")[2], keep_blank_values=True)).get("prefix")
    suffix = f"conformance-{secrets.token_hex(6)}"
    return f"{own}-{suffix}" if own else f"planlagt-{suffix}"


class BackendFactory:
    """Builds backends from one URL for one test and closes them all afterwards.

    ``factory()`` builds a backend with the test's prefix, so every backend it returns
    shares the test's data as separate clients of one server would. ``factory(prefix=p)``
    uses another prefix, such as one from :meth:`new_prefix`.
    """

    def __init__(self, url: str) -> None:
        self.base_url = url
        self.prefix = new_prefix(url)
        self._opened: list[Backend] = []

    def __call__(self, *, prefix: str | None = None) -> Backend:
        backend = open_backend(self.url_for(prefix))
        self._opened.append(backend)
        return backend

    def new_prefix(self) -> str:
        """Return another random prefix for the same URL."""
        return new_prefix(self.base_url)

    def url_for(self, prefix: str | None = None) -> str:
        """Return the URL with ``prefix`` (default the test's prefix), for worker processes."""
        return with_prefix(self.base_url, self.prefix if prefix is None else prefix)

    def close_all(self) -> None:
        """Close every backend built, newest first, then fail the test if any ``close()`` raised."""
        failures = []
        for backend in reversed(self._opened):
            try:
                backend.close()
            except Exception as exc:
                LOG.warning("Closing backend %s failed: %s", backend.url, exc)
                failures.append(f"{backend.url}: {type(exc).__name__}: {exc}")
        self._opened.clear()
        if failures:
            pytest.fail("close() raised: " + "; ".join(failures), pytrace=False)


# -- Leak check -------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceSnapshot:
    """Threads and file descriptors of this process at one moment (``fds`` None where unmeasurable)."""

    threads: frozenset[threading.Thread]
    fds: frozenset[int] | None

    @classmethod
    def take(cls) -> ResourceSnapshot:
        return cls(threads=frozenset(threading.enumerate()), fds=_open_fds())


def _open_fds() -> frozenset[int] | None:
    """Return the open file descriptors, or None where the platform does not list them.

    The listing opens a descriptor of its own, which is closed again by the time this
    returns. It is left out, because a later descriptor with its number would go unnoticed.
    """
    for directory in FD_DIRECTORIES:
        try:
            listed = [int(name) for name in os.listdir(directory)]
        except OSError:
            continue
        return frozenset(fd for fd in listed if _is_open(fd))
    return None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _describe_fd(fd: int) -> str:
    try:
        return f"fd {fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return f"fd {fd}"


def leaked_resources(baseline: ResourceSnapshot) -> list[str]:
    """Return the threads and file descriptors open now that were not open at ``baseline``."""
    gc.collect()
    leaks = [
        f"thread {thread.name!r}"
        for thread in threading.enumerate()
        if thread not in baseline.threads and thread.is_alive()
    ]
    now_fds = _open_fds()
    if baseline.fds is not None and now_fds is not None:
        leaks.extend(_describe_fd(fd) for fd in sorted(now_fds - baseline.fds))
    return leaks


def check_no_leaks(baseline: ResourceSnapshot, grace_s: float = LEAK_GRACE_S) -> None:
    """Fail the test if resources opened since ``baseline`` are still open after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    leaks = leaked_resources(baseline)
    while leaks and time.monotonic() < deadline:
        time.sleep(0.05)
        leaks = leaked_resources(baseline)
    if leaks:
        pytest.fail(
            f"still open {grace_s} s after every backend was closed: {', '.join(leaks)}; "
            "close() must stop helper threads and close connections and files",
            pytrace=False,
        )


# -- pytest hooks -----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("planlagt-conformance", "planlagt backend conformance suite")
    group.addoption(
        "--backend-url",
        action="append",
        default=[],
        metavar="URL",
        help=f"backend URL to test; repeat to test several (default: the URLs in ${URL_ENV})",
    )


def configured_urls(config: pytest.Config) -> list[str]:
    """Return the ``--backend-url`` values, else the whitespace-separated URLs in ``PLANLAGT_CONFORMANCE_URL``."""
    urls = list(config.getoption("backend_url") or [])
    if not urls:
        urls = os.environ.get(URL_ENV, "").split()
    return urls


def backend_ids(urls: list[str]) -> list[str]:
    """Return a short test id per URL: its scheme, numbered when several URLs share one."""
    schemes = [url.partition("://")[0].lower() for url in urls]
    ids = []
    for index, scheme in enumerate(schemes):
        ordinal = schemes[: index + 1].count(scheme)
        ids.append(scheme if ordinal == 1 else f"{scheme}-{ordinal}")
    return ids


def pytest_report_header(config: pytest.Config) -> list[str]:
    urls = configured_urls(config)
    return [f"planlagt backend [{name}]: {redact_url(url)}" for name, url in zip(backend_ids(urls), urls, strict=True)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_url" not in metafunc.fixturenames:
        return
    urls = configured_urls(metafunc.config)
    if urls:
        metafunc.parametrize("backend_url", urls, ids=backend_ids(urls), scope="session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Keep the outcome of the test body, so the leak check can stay quiet after a failure
    # that may have left the test's own threads running.
    report = yield
    if report.when == "call":
        item.stash[_call_report_key] = report
    return report


# -- Fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def backend_url() -> str:
    """The backend URL under test (parametrized from ``--backend-url``)."""
    pytest.fail(f"no backend URL given: pass --backend-url URL or set {URL_ENV}", pytrace=False)


@pytest.fixture
def capabilities(backend_url: str) -> Capabilities:
    """The capabilities the backend class declares."""
    return backend_class_for(backend_url).capabilities


@pytest.fixture
def timing(capabilities: Capabilities) -> Timing:
    """TTLs and expiry bounds derived from the backend's capabilities."""
    return Timing.for_capabilities(capabilities)


@pytest.fixture
def backend_factory(request: pytest.FixtureRequest, backend_url: str) -> Iterator[BackendFactory]:
    """A :class:`BackendFactory` for the URL under test, which closes its backends and checks for leaks."""
    baseline = ResourceSnapshot.take()
    factory = BackendFactory(backend_url)
    yield factory

    factory.close_all()

    call_report = request.node.stash.get(_call_report_key, None)
    if call_report is None or call_report.passed:
        check_no_leaks(baseline)


@pytest.fixture
def backend(backend_factory: BackendFactory) -> Backend:
    """One backend with the test's own prefix."""
    return backend_factory()


@pytest.fixture
def other_prefix_backend(backend_factory: BackendFactory) -> Backend:
    """A backend on the same server with a different random prefix."""
    return backend_factory(prefix=backend_factory.new_prefix())
