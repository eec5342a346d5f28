"""The ``resonate`` command: ``serve``, ``dev``, ``plugins``, ``config`` and plugin commands.

Every setting is a flag of ``serve`` and ``dev`` (see :mod:`resonate_server.config`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from . import __version__
from .config import ConfigError, Setting, Settings, load_settings
from .config import reference_table as settings_reference
from .plugins import PluginManager
from .plugins import load as load_plugins


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"resonate: error: {message}", err=True)
    sys.exit(code)


def _setting_options(schema: list[Setting]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for s in sorted(schema, key=lambda s: s.key, reverse=True):
            dest = "setting__" + s.key.replace(".", "__")
            secret = " (secret)" if s.secret else ""
            default = "" if s.secret else f" [default: {s.show(s.default)}]"
            if s.type is bool:
                no = "--no-" + s.flag[2:]
                opt = click.Option(
                    [f"{s.flag}/{no}", dest], default=None, help=f"{s.help}{default}"
                )
            else:
                opt = click.Option(
                    [s.flag, dest],
                    default=None,
                    metavar=s.type.__name__.upper(),
                    help=f"{s.help}{secret}{default}",
                )
            fn.__click_params__ = [*getattr(fn, "__click_params__", []), opt]  # type: ignore
        return fn

    return decorate


def _cli_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        k[len("setting__") :].replace("__", "."): v
        for k, v in kwargs.items()
        if k.startswith("setting__") and v is not None
    }


def _settings(
    pm: PluginManager,
    config: str | None,
    kwargs: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> Settings:
    cli = _cli_values(kwargs)
    for key, value in (overrides or {}).items():
        cli.setdefault(key, value)
    return load_settings(pm.settings_schema(), cli, config)


def _run_server(pm: PluginManager, settings: Settings) -> None:
    from . import logs
    from .app import StartupError, build_server
    from .store import StoreError

    logs.setup(settings["log.level"], settings["log.format"])
    try:
        loop_factory = _loop_factory(settings["event_loop"])
        server = build_server(settings, pm)
    except ConfigError as e:
        _fail(str(e))
        return
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(server.serve(settings["api.http.host"], settings["api.http.port"]))
    except (StoreError, StartupError) as e:
        _fail(str(e), 1)


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the event loop ``event_loop`` names; None for asyncio's own.

    Raises :class:`ConfigError` when ``uvloop`` is asked for and not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "'event_loop': uvloop is not installed (pip install uvloop, or use auto)"
            ) from None
        return None
    return uvloop.new_event_loop


def build_cli(pm: PluginManager) -> click.Group:
    schema = pm.settings_schema()

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, prog_name="resonate")
    def cli() -> None:
        """resonate-server: a durable promise server for the Resonate SDKs."""

    config_option = click.option(
        "--config",
        "-c",
        "config",
        default=None,
        metavar="FILE",
        help="YAML config file [default: resonate.yaml in the working directory, if present].",
    )

    @cli.command()
    @config_option
    @_setting_options(schema)
    def serve(config: str | None, **kwargs: Any) -> None:
        """Run the server (SQLite unless another store is enabled)."""
        try:
            settings = _settings(pm, config, kwargs)
        except ConfigError as e:
            _fail(str(e))
        _run_server(pm, settings)

    @cli.command()
    @config_option
    @_setting_options(schema)
    def dev(config: str | None, **kwargs: Any) -> None:
        """Run the server on a throwaway in-memory SQLite database."""
        try:
            settings = _settings(pm, config, kwargs, {"aio.store.sqlite.path": ":memory:"})
        except ConfigError as e:
            _fail(str(e))
        _run_server(pm, settings)

    @cli.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def plugins_cmd(as_json: bool) -> None:
        """List the loaded plugins with their versions and hooks."""
        infos = pm.info()
        if as_json:
            click.echo(
                orjson.dumps(
                    [
                        {
                            "name": i.name,
                            "distribution": i.dist,
                            "version": i.version,
                            "hooks": list(i.hooks),
                        }
                        for i in infos
                    ],
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
            return
        for i in infos:
            click.echo(f"{i.name} ({i.dist or '?'} {i.version or '?'}): {', '.join(i.hooks)}")

    @cli.command("config")
    @click.option(
        "--reference",
        is_flag=True,
        help="Print the reference table of every setting (Markdown) and exit.",
    )
    @config_option
    @_setting_options(schema)
    def config_cmd(reference: bool, config: str | None, **kwargs: Any) -> None:
        """Show every setting's value and where it came from (secrets masked)."""
        if reference:
            click.echo(settings_reference(schema))
            return
        try:
            settings = _settings(pm, config, kwargs)
            pm.validate(settings)
        except ConfigError as e:
            _fail(str(e))
        for key, shown, source in settings.describe():
            click.echo(f"{key} = {shown}  ({source})")

    @cli.command()
    @click.argument("action", type=click.Choice(["status", "apply"]))
    @config_option
    @_setting_options(schema)
    def migrate(action: str, config: str | None, **kwargs: Any) -> None:
        """Show (status) or apply (apply) the selected store's schema migrations."""
        from .schema import MIGRATIONS
        from .store import StoreError

        try:
            settings = _settings(pm, config, kwargs)
            pm.validate(settings)
            backend = pm.select_store(settings)
        except ConfigError as e:
            _fail(str(e))
        store = backend.factory(settings.section(f"aio.store.{backend.name}"), settings)
        names = {m.version: m.description for m in MIGRATIONS}

        async def run() -> None:
            await store.start(migrate=False)
            try:
                if action == "apply":
                    done = await store.apply_migrations()
                    for v in done:
                        click.echo(f"applied {v}: {names[v]}")
                    if not done:
                        click.echo("nothing to apply")
                applied, pending = await store.schema_versions()
                for v in applied:
                    click.echo(f"{v} applied  {names.get(v, '(unknown to this version)')}")
                for v in pending:
                    click.echo(f"{v} pending  {names[v]}")
            finally:
                await store.close()

        try:
            asyncio.run(run())
        except StoreError as e:
            _fail(str(e), 1)

    add_client_commands(cli)
    pm.hook.resonate_cli_commands(cli=cli)
    return cli


def main() -> None:
    try:
        pm = load_plugins()
    except ConfigError as e:
        _fail(str(e))
    build_cli(pm)(prog_name="resonate")


def _duration_ms(text: str) -> int:
    from .config import parse_duration

    try:
        return int(parse_duration(text) * 1000)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--token",
        "-T",
        envvar="RESONATE_TOKEN",
        default=None,
        help="Bearer token (env RESONATE_TOKEN).",
    )(fn)
    return click.option(
        "--server",
        "-S",
        envvar="RESONATE_URL",
        default="http://localhost:8001",
        show_default=True,
        help="Server URL (env RESONATE_URL).",
    )(fn)


def _rpc(server: str, token: str | None, kind: str, data: dict[str, Any]) -> Any:
    from .client import ClientError, call

    try:
        status, reply = call(server, kind, data, token)
    except ClientError as e:
        _fail(str(e), 1)
    if status >= 300:
        _fail(f"{kind} failed with {status}: {reply}", 1)
    return reply


def _show(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _promise_view(record: dict[str, Any]) -> dict[str, Any]:
    from .client import decode

    view = dict(record)
    for key in ("param", "value"):
        if isinstance(view.get(key), dict) and "data" in view[key]:
            view[key] = {**view[key], "data": decode(view[key]["data"])}
    return view


def add_client_commands(cli: click.Group) -> None:
    """``resonate invoke`` and ``resonate promises …``: talk to a running server."""

    @cli.command()
    @click.argument("promise_id", metavar="ID")
    @click.option("--func", "-f", required=True, help="Registered function name.")
    @click.option("--arg", "args", multiple=True, help="An argument (JSON, else a string).")
    @click.option("--json-args", default=None, help="All arguments as one JSON array.")
    @click.option(
        "--target",
        "-t",
        default="default",
        show_default=True,
        help="Worker group (or a full address such as poll://any@group).",
    )
    @click.option("--timeout", default="1d", show_default=True, help="Promise timeout.")
    @click.option("--delay", default=None, help="Start no earlier than this from now.")
    @click.option(
        "--version",
        "func_version",
        default=1,
        show_default=True,
        type=int,
        help="Function version.",
    )
    @_client_options
    def invoke(
        promise_id: str,
        func: str,
        args: tuple[str, ...],
        json_args: str | None,
        target: str,
        timeout: str,
        delay: str | None,
        func_version: int,
        server: str,
        token: str | None,
    ) -> None:
        """Start FUNC on a worker of TARGET as the durable promise ID."""
        import time

        from .client import invoke_request, parse_arg

        values = [parse_arg(a) for a in args]
        if json_args is not None:
            extra = parse_arg(json_args)
            if not isinstance(extra, list):
                raise click.BadParameter("must be a JSON array", param_hint="--json-args")
            values += extra
        data = invoke_request(
            promise_id,
            func,
            values,
            target,
            int(time.time() * 1000),
            _duration_ms(timeout),
            func_version,
            _duration_ms(delay) if delay else 0,
        )
        reply = _rpc(server, token, "promise.create", data)
        state = reply["promise"]["state"]
        click.echo(
            f"invoked {func} as {promise_id} on {data['tags']['resonate:target']} (promise {state})"
        )

    @cli.group()
    def promises() -> None:
        """Read and settle durable promises (human-in-the-loop, debugging)."""

    @promises.command("get")
    @click.argument("promise_id", metavar="ID")
    @_client_options
    def promise_get(promise_id: str, server: str, token: str | None) -> None:
        """Show a promise, with param and value decoded."""
        _show(_promise_view(_rpc(server, token, "promise.get", {"id": promise_id})["promise"]))

    def settle_command(name: str, state: str) -> None:
        @promises.command(name)
        @click.argument("promise_id", metavar="ID")
        @click.option("--value", default=None, help="The value, as JSON (else a string).")
        @_client_options
        def settle(promise_id: str, value: str | None, server: str, token: str | None) -> None:
            from .client import encode, parse_arg

            data: dict[str, Any] = {"id": promise_id, "state": state, "value": {}}
            if value is not None:
                data["value"] = {"data": encode(parse_arg(value))}
            reply = _rpc(server, token, "promise.settle", data)
            _show(_promise_view(reply["promise"]))

        settle.__doc__ = f"Settle a pending promise as {state}."

    settle_command("resolve", "resolved")
    settle_command("reject", "rejected")
    settle_command("cancel", "rejected_canceled")

    @promises.command("search")
    @click.option("--state", default=None, help="Exact state to match.")
    @click.option("--tag", "tags", multiple=True, help="KEY=VALUE tag to match (repeatable).")
    @click.option("--limit", default=100, show_default=True, type=int)
    @click.option("--cursor", default=None)
    @_client_options
    def promise_search(
        state: str | None,
        tags: tuple[str, ...],
        limit: int,
        cursor: str | None,
        server: str,
        token: str | None,
    ) -> None:
        """List promises by state and tags, one page at a time."""
        pairs = dict(t.split("=", 1) for t in tags if "=" in t)
        data: dict[str, Any] = {"tags": pairs, "limit": limit}
        if state:
            data["state"] = state
        if cursor:
            data["cursor"] = cursor
        _show(_rpc(server, token, "promise.search", data))
