"""The interface of a transport plugin: how outbox messages leave the server."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .addresses import Address


class Transport(ABC):
    """Delivers messages to the addresses of its ``schemes`` (for example ``{"poll"}``)."""

    name: str = "transport"
    schemes: frozenset[str] = frozenset()

    async def start(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Acquire resources (client sessions, queues). Called once before any ``send``."""

    async def stop(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release resources and end open streams. Called once at shutdown."""

    @abstractmethod
    async def send(self, address: Address, message: dict[str, Any]) -> bool | None:
        """Hand ``message`` to ``address``.

        Return True when it was delivered, False when it was dropped (no subscriber, full
        buffer), or None when delivery continues in the background; the transport then calls
        :meth:`Server.report_delivery <resonate_server.app.Server.report_delivery>` once with
        the final outcome. Must not block for long: queue and return. Raising counts as a
        failed delivery.
        """
