"""The servers of ``conformance/docker-compose.yml`` and the environment variables that name them.

The compose file is the third way to give the tests their servers, after an environment
variable per backend and a local server binary. ``tests/test_compose_file.py`` checks that
the file and this table agree.
"""

from __future__ import annotations

__all__ = ["COMPOSE_SERVICES"]

# service name: (environment variable, URL of the service as the compose file publishes it)
COMPOSE_SERVICES: dict[str, tuple[str, str]] = {
    "redis": ("PLANLAGT_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
    "etcd": ("PLANLAGT_TEST_ETCD_URL", "etcd://127.0.0.1:2379"),
    "zookeeper": ("PLANLAGT_TEST_ZOOKEEPER_URL", "zookeeper://127.0.0.1:2181"),
    "postgres": ("PLANLAGT_TEST_POSTGRES_URL", "postgresql://planlagt:planlagt@127.0.0.1:5432/planlagt"),
}
