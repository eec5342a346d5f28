"""A third-party resonate-server plugin, written only against the core's public API.

It adds a setting, a validator, a CLI command, a route, a transport for ``example://``
addresses, and observers; ``GET /example/stats`` reports what it saw.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from aiohttp import web
from resonate_server import Setting, hookimpl
from resonate_server.addresses import Address
from resonate_server.transport import Transport

STATE: dict[str, Any] = {
    "requests": [],
    "changes": [],
    "deliveries": [],
    "received": [],
    "started": False,
}


class ExampleTransport(Transport):
    name = "example"
    schemes = frozenset({"example"})

    async def send(self, address: Address, message: dict[str, Any]) -> bool:
        STATE["received"].append({"address": address.raw, "message": message})
        return True


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting("example.greeting", str, "hello", "What `resonate example-hello` prints."),
        Setting("example.marker", str, "", "File written at shutdown, when set."),
        Setting("example.shutdown_delay", float, 0.0, "Seconds the shutdown hook waits first."),
    ]


@hookimpl
def resonate_config_validate(settings: Any) -> list[str]:
    if settings["example.greeting"] == "forbidden":
        return ["'example.greeting' must not be 'forbidden'"]
    return []


@hookimpl
def resonate_cli_commands(cli: click.Group) -> None:
    @cli.command("example-hello")
    def example_hello() -> None:
        """Print a greeting (from the example plugin)."""
        click.echo("hello from the example plugin")


@hookimpl
def resonate_transports(server: Any) -> list[Transport]:
    return [ExampleTransport()]


@hookimpl
def resonate_routes(server: Any) -> list[tuple[str, str, Any]]:
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({**STATE, "greeting": server.settings["example.greeting"]})

    return [("GET", "/example/stats", stats)]


@hookimpl
def resonate_request_finished(server: Any, kind: str, status: int, duration: float) -> None:
    assert server.settings is not None
    if kind == "example.explode":
        raise RuntimeError("an observer that fails")
    STATE["requests"].append({"kind": kind, "status": status, "duration": duration})


@hookimpl
def resonate_state_changes(changes: list[Any]) -> None:  # may omit arguments it ignores
    STATE["changes"].extend(
        {"entity": c.entity, "id": c.id, "before": c.before, "after": c.after} for c in changes
    )


@hookimpl
def resonate_message_delivered(kind: str, address: str, outcome: str) -> None:
    STATE["deliveries"].append({"kind": kind, "address": address, "outcome": outcome})


@hookimpl
async def resonate_startup(server: Any) -> None:
    STATE["started"] = True


@hookimpl
def resonate_shutdown(server: Any) -> Any:
    async def write_marker() -> None:
        await asyncio.sleep(server.settings["example.shutdown_delay"])
        marker = server.settings["example.marker"]
        if marker:
            Path(marker).write_text(f"stopped after {len(STATE['requests'])} requests")

    return write_marker()
