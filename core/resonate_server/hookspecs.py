"""Every hook a plugin can implement. Each contract here is public API (docs/plugins.md).

Hooks return objects or factories; anything asynchronous is a coroutine the host awaits.
None of these runs on the per-request hot path except ``resonate_request_finished`` and
``resonate_state_changes``, which the host calls only when some plugin implements them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import click

    from .app import Server
    from .config import Setting, Settings
    from .engine import StateChange
    from .store import StoreBackend
    from .transport import Transport

hookspec = pluggy.HookspecMarker("resonate")


# --- storage -------------------------------------------------------------------------------


@hookspec
def resonate_store_backends() -> list[StoreBackend]:
    """Describe the stores this plugin provides.

    Return a list of :class:`~resonate_server.store.StoreBackend` (``name``, ``description``,
    ``factory``). A store named ``N`` is selected with ``aio.store.N.enable``; its factory is
    called with the ``aio.store.N`` section and the whole :class:`Settings`. Names must be
    unique across installed plugins.
    """


# --- transport -----------------------------------------------------------------------------


@hookspec
def resonate_transports(server: Server) -> list[Transport]:
    """Provide transports: objects that deliver outbox messages for some address schemes.

    Each :class:`~resonate_server.transport.Transport` declares its ``schemes``; addresses of
    other schemes are rejected when a promise or listener is created. Two transports must not
    claim the same scheme. Called once at startup, after the store is open.
    """


@hookspec
def resonate_routes(server: Server) -> list[tuple[str, str, Any]]:
    """Add HTTP routes to the API listener: a list of ``(method, path, handler)``.

    ``handler`` is an aiohttp handler ``async (request) -> response``. Paths must not collide
    with the core's ``POST /`` or another plugin's routes. Called once while the app is built.
    """


# --- metrics and observation -----------------------------------------------------------------


@hookspec
def resonate_request_finished(server: Server, kind: str, status: int, duration: float) -> None:
    """Observe one RPC request after its reply is ready.

    ``kind`` is the request kind as sent (``"unknown"`` for unparseable envelopes), ``status``
    the HTTP status, ``duration`` seconds spent in the server. Must be fast and never raise:
    the server calls implementations directly (not through pluggy) on every request, and one
    that raises is logged once and then ignored.
    """


@hookspec
def resonate_state_changes(server: Server, changes: list[StateChange]) -> None:
    """Observe the state transitions one committed transaction made.

    Each :class:`~resonate_server.engine.StateChange` names an entity (``"promise"``,
    ``"task"`` or ``"schedule"``), its id, the state before (``None`` when created) and after.
    Schedules go ``None → "active"`` when created, ``"active" → "fired"`` each time an
    occurrence creates its promise (the schedule stays active) and ``"active" → "deleted"``.
    Called on the event loop after the commit, once per transaction with at least one change.
    """


@hookspec
def resonate_message_delivered(server: Server, kind: str, address: str, outcome: str) -> None:
    """Observe one outbox message handed to a transport.

    ``kind`` is ``"execute"`` or ``"unblock"``; ``outcome`` is ``"success"``, ``"error"`` or
    ``"dropped"`` (no transport or no subscriber for the address).
    """


# --- lifecycle -----------------------------------------------------------------------------


@hookspec
def resonate_config_settings() -> list[Setting]:
    """Declare configuration keys (:class:`~resonate_server.config.Setting`).

    Each key gets a CLI flag, an environment variable and a place in the YAML file. Keys are
    dotted and should live under the plugin's own prefix (a store under ``aio.store.<name>``).
    """


@hookspec
def resonate_config_validate(settings: Settings) -> list[str]:
    """Check settings that single-key constraints cannot: return one-line error messages.

    An empty list means valid. Messages must name the keys involved and never show secrets.
    """


@hookspec
def resonate_cli_commands(cli: click.Group) -> None:
    """Add subcommands to the ``resonate`` command group (``cli.add_command(...)``)."""


@hookspec
def resonate_startup(server: Server) -> Awaitable[None] | None:
    """Run when the server starts, after the store is open and before it accepts requests.

    May return a coroutine, which is awaited; an exception aborts startup with its message.
    """


@hookspec
def resonate_shutdown(server: Server) -> Awaitable[None] | None:
    """Run during graceful shutdown, after requests have drained and before the store closes.

    May return a coroutine, which is awaited within the shutdown timeout; when the timeout
    passes first the server exits anyway (logging a warning) without waiting for it.
    """
