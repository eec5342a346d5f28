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
    from .app import build_server
    from .store import StoreError

    logs.setup(settings["log.level"], settings["log.format"])
    try:
        server = build_server(settings, pm)
    except ConfigError as e:
        _fail(str(e))
        return
    try:
        asyncio.run(server.serve(settings["api.http.host"], settings["api.http.port"]))
    except StoreError as e:
        _fail(str(e), 1)


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
    @config_option
    @_setting_options(schema)
    def config_cmd(config: str | None, **kwargs: Any) -> None:
        """Show every setting's value and where it came from (secrets masked)."""
        try:
            settings = _settings(pm, config, kwargs)
            pm.validate(settings)
        except ConfigError as e:
            _fail(str(e))
        for key, shown, source in settings.describe():
            click.echo(f"{key} = {shown}  ({source})")

    pm.hook.resonate_cli_commands(cli=cli)
    return cli


def main() -> None:
    try:
        pm = load_plugins()
    except ConfigError as e:
        _fail(str(e))
    build_cli(pm)(prog_name="resonate")
