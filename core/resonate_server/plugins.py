"""Plugin discovery: entry points in the ``resonate.plugins`` group, steerable by operators.

``RESONATE_LOAD_PLUGINS`` (comma-separated entry-point names) limits which plugins load; empty
means none. The core registers itself first, as an ordinary plugin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from . import core_plugin, hookspecs
from .config import ConfigError, Setting, Settings
from .store import StoreBackend

ENTRY_POINT_GROUP = "resonate.plugins"
LOAD_ENV = "RESONATE_LOAD_PLUGINS"
# Where an operator gets a store we know of but that is not installed.
KNOWN_STORES = {"postgres": "pip install 'resonate-server[postgres]'"}


class PluginError(ConfigError):
    """A plugin is missing, broken or conflicting."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    dist: str | None
    version: str | None
    hooks: tuple[str, ...]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what ``resonate plugins`` shows about each plugin."""

    def __init__(self) -> None:
        super().__init__("resonate")
        self.add_hookspecs(hookspecs)
        self.dists: dict[str, tuple[str | None, str | None]] = {}

    def load_entry_points(self, only: set[str] | None) -> None:
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if only is not None:
            missing = sorted(only - set(found))
            if missing:
                raise PluginError(
                    f"{LOAD_ENV} names {', '.join(missing)}, which is not installed "
                    f"(installed: {', '.join(sorted(found)) or 'none'})"
                )
        for name, ep in sorted(found.items()):
            if only is not None and name not in only:
                continue
            try:
                module = ep.load()
            except Exception as e:
                raise PluginError(
                    f"plugin '{name}' failed to load: {type(e).__name__}: {e}"
                ) from None
            self.register(module, name=name)
            dist = ep.dist
            self.dists[name] = (dist.name if dist else None, dist.version if dist else None)
        self.check_pending()

    def info(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.list_name_plugin():
            if name is None:
                continue
            hooks = tuple(sorted(h.name for h in self.get_hookcallers(plugin) or []))
            dist, version = self.dists.get(name, (None, None))
            if plugin is core_plugin:
                from . import __version__

                dist, version = "resonate-server-core", __version__
            out.append(PluginInfo(name, dist, version, hooks))
        return out

    def store_backends(self) -> dict[str, StoreBackend]:
        backends: dict[str, StoreBackend] = {}
        for batch in self.hook.resonate_store_backends():
            for b in batch:
                if b.name in backends:
                    raise PluginError(f"two plugins provide a store named '{b.name}'")
                backends[b.name] = b
        return backends

    def settings_schema(self) -> list[Setting]:
        items = [s for batch in self.hook.resonate_config_settings() for s in batch]
        declared = {s.key for s in items}
        for name in self.store_backends():
            key = f"aio.store.{name}.enable"
            if key not in declared:
                items.append(Setting(key, bool, False, f"Use the {name} store."))
        return items

    def validate(self, settings: Settings) -> None:
        errors = [
            e for batch in self.hook.resonate_config_validate(settings=settings) for e in batch
        ]
        if errors:
            raise ConfigError(errors[0])

    def select_store(self, settings: Settings) -> StoreBackend:
        """The backend named by ``aio.store.<name>.enable`` (SQLite when none is enabled)."""
        enabled = sorted(
            k.split(".")[2]
            for k, v in settings.items()
            if k.startswith("aio.store.") and k.endswith(".enable") and v
        )
        if len(enabled) > 1:
            raise ConfigError(
                f"more than one store is enabled ({', '.join(enabled)}); "
                "enable exactly one aio.store.<name>.enable"
            )
        name = enabled[0] if enabled else "sqlite"
        backends = self.store_backends()
        if name not in backends:
            how = KNOWN_STORES.get(name, f"install the plugin that provides store '{name}'")
            raise PluginError(f"store '{name}' is not installed: {how}")
        return backends[name]


def load(
    only: str | None = None,
    *,
    entry_points_too: bool = True,
    extra: list[ModuleType | Any] | None = None,
) -> PluginManager:
    """A plugin manager with the core and the installed plugins (filtered by ``only``)."""
    if only is None:
        only = os.environ.get(LOAD_ENV)
    names = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
    pm = PluginManager()
    pm.register(core_plugin, name="core")
    for plugin in extra or []:
        pm.register(plugin)
    if entry_points_too:
        pm.load_entry_points(names)
    return pm
