"""planlagt's Redis backend: ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs, built on redis-py."""

from __future__ import annotations

from .backend import RedisBackend
from .keys import KeyLayout
from .options import RedisOptions, parse_redis_url

__all__ = ["KeyLayout", "RedisBackend", "RedisOptions", "parse_redis_url"]
