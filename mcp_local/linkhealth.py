"""The hub link's state on the sidecar's gRPC health service, for `mcphub local health`.

A sidecar the hub refuses (a wrong token, no token, another sandbox's name) still serves its
agent, so its own health says SERVING; the link is reported apart, as the health service
`mcphub.local.HubLink`:

    SERVING      registered with the hub
    UNKNOWN      connecting (no answer from the hub yet, or the stream broke)
    NOT_SERVING  refused by the hub, or replaced by another connection of the same sandbox

Check's answer for it carries the state as JSON in the trailing metadata `mcphub-hub-link-bin`
(`{"hub", "status", "detail", "sandbox"}`): health status values have no room for the hub's
reason. A sidecar without `--hub` does not know the service (NOT_FOUND).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health_pb2

from .hublink import CONNECTING, REGISTERED, LinkState
from .service import StreamLimit
from .servicer import HealthService

__all__ = ["LINK_SERVICE", "LINK_STATE_KEY", "LinkHealth"]

LINK_SERVICE = "mcphub.local.HubLink"
LINK_STATE_KEY = "mcphub-hub-link-bin"

_STATUS = {
    REGISTERED: health_pb2.HealthCheckResponse.SERVING,
    CONNECTING: health_pb2.HealthCheckResponse.UNKNOWN,
}


class LinkHealth(HealthService):
    """gRPC health checking, plus `mcphub.local.HubLink` while `link()` gives a hub link's state."""

    def __init__(
        self, link: Callable[[], tuple[str, LinkState] | None], streams: StreamLimit | None = None
    ) -> None:
        super().__init__(streams)
        self._link = link

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        current = self._link() if request.service == LINK_SERVICE else None
        if current is None:
            return await super().Check(request, context)
        hub, state = current
        body = {"hub": hub, "status": state.status, "detail": state.detail, "sandbox": state.sandbox}
        context.set_trailing_metadata(((LINK_STATE_KEY, json.dumps(body).encode()),))
        status = _STATUS.get(state.status, health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=status)
