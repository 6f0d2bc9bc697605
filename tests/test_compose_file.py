"""The Docker compose file offers every backend's server on loopback, as the harness expects.

Docker is not available where the tests run, so the file is parsed and checked, not run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from planlagt_conformance import servers
from planlagt_conformance.compose import COMPOSE_SERVICES

from planlagt_core.url import parse_url

pytestmark = pytest.mark.fast

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "conformance" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_compose_has_every_service(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    assert set(services) == set(COMPOSE_SERVICES)


@pytest.mark.parametrize("service", sorted(COMPOSE_SERVICES))
def test_compose_port_on_loopback(compose: dict[str, object], service: str) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    ports = services[service]["ports"]
    _env, url = COMPOSE_SERVICES[service]
    port = parse_url(url).port
    assert ports == [f"127.0.0.1:{port}:{port}"]


@pytest.mark.parametrize("service", sorted(COMPOSE_SERVICES))
def test_compose_file_documents_variable(service: str) -> None:
    env, url = COMPOSE_SERVICES[service]
    assert f"export {env}={url}" in COMPOSE_FILE.read_text(encoding="utf-8")


def test_harness_message_names_compose_file() -> None:
    assert "conformance/docker-compose.yml" in servers._NO_REDIS_MESSAGE
    assert COMPOSE_SERVICES["redis"][0] == servers.REDIS_URL_ENV
