"""planlagt's etcd backend: ``etcd://`` and ``etcds://`` (TLS) URLs, on the etcd v3 API.

Built on etcd-sdk-python (``pip install "planlagt[etcd]"``), which imports as ``pyetcd``.
"""

from __future__ import annotations

from .backend import EtcdBackend
from .keys import KeyLayout
from .options import EtcdOptions, parse_etcd_url

__all__ = ["EtcdBackend", "EtcdOptions", "KeyLayout", "parse_etcd_url"]
