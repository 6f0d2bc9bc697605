"""Control state: a persistent node per paused job and per pending trigger request."""

from __future__ import annotations

import contextlib

from kazoo.exceptions import NodeExistsError, NoNodeError

from planlagt_core.models import ControlState, TriggerRequest

from .layout import decode_name
from .store import NodeStore

__all__ = ["ControlOperations"]


class ControlOperations:
    """Pause flags and trigger requests under one :class:`NodeStore`."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.session = store.session
        self.layout = store.layout

    def read_control(self) -> ControlState:
        paused_names, trigger_names = self.session.call_all(
            "read_control",
            [
                lambda client: client.get_children_async(self.layout.paused_root),
                lambda client: client.get_children_async(self.layout.triggers_root),
            ],
        )
        paused = frozenset() if isinstance(paused_names, NoNodeError) else frozenset(map(decode_name, paused_names))
        names = [] if isinstance(trigger_names, NoNodeError) else sorted(trigger_names)

        paths = [f"{self.layout.triggers_root}/{name}" for name in names]
        triggers = [
            self.store.parse("trigger request", path, TriggerRequest.from_json, node[0])
            for path, node in zip(paths, self.store.read_all("read_control", paths), strict=True)
            if node is not None  # removed since it was listed
        ]
        triggers.sort(key=lambda request: (request.requested_at, request.request_id))
        return ControlState(paused=paused, triggers=tuple(triggers))

    def set_paused(self, job: str, paused: bool) -> None:
        path = self.layout.paused(job)
        if paused:
            with contextlib.suppress(NodeExistsError):
                self.session.call("set_paused", lambda client: client.create_async(path, b""))
            return
        with contextlib.suppress(NoNodeError):
            self.session.call("set_paused", lambda client: client.delete_async(path))

    def add_trigger(self, request: TriggerRequest) -> None:
        data = request.to_json().encode("utf-8")
        with contextlib.suppress(NodeExistsError):
            self.session.call(
                "add_trigger", lambda client: client.create_async(self.layout.trigger(request.request_id), data)
            )

    def remove_trigger(self, request_id: str) -> bool:
        try:
            self.session.call("remove_trigger", lambda client: client.delete_async(self.layout.trigger(request_id)))
        except NoNodeError:
            return False
        return True
