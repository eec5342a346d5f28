"""Settings: defaults < config file < ``RESONATE_*`` environment < CLI flags.

The one owner of configuration. Every key is a :class:`Setting` contributed by the core or by a
plugin (hook ``resonate_config_settings``); each gets a CLI flag made from its dotted key
(``aio.store.postgres.host`` → ``--aio-store-postgres-host``) and an environment variable with
``__`` for nesting (``RESONATE_AIO__STORE__POSTGRES__HOST``). Unknown keys and bad values are
one-line :class:`ConfigError`\\ s naming the key and where it came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = "resonate.yaml"
ENV_PREFIX = "RESONATE"
# Environment names that belong to the SDKs or to plugin loading, never to server settings.
FOREIGN_ENV = frozenset({"URL", "HOST", "PORT", "SCHEME", "TOKEN", "LOAD_PLUGINS", "ENV"})


class ConfigError(Exception):
    """A configuration mistake, with a one-line message for the operator."""


class Duration(float):
    """Seconds, written as ``500ms``, ``10s``, ``1m30s``, ``2h`` or ``1d``."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> Duration:
    text = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 10s, 500ms or 1m30s, got {text!r}")
    return Duration(total)


@dataclass(frozen=True)
class Setting:
    """One configuration key: its type, default, help text and constraints.

    ``type`` is ``str``, ``int``, ``bool``, ``float`` or :class:`Duration`. ``secret`` values are
    never shown in logs, errors or ``resonate config``.
    """

    key: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + "_" + "__".join(self.key.upper().split("."))

    def coerce(self, raw: Any) -> Any:
        """Convert ``raw`` (from YAML, env or CLI) to this setting's type; ValueError if wrong."""
        t = self.type
        if t is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if t is Duration:
            if isinstance(raw, str):
                value: Any = parse_duration(raw)
            else:
                raise ValueError(f"expected a duration such as 10s or 500ms, got {raw!r}")
        elif t is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, str)):
                raise ValueError(f"expected an integer, got {raw!r}")
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"expected an integer, got {raw!r}") from None
        elif t is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise ValueError(f"expected a number, got {raw!r}")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"expected a number, got {raw!r}") from None
        else:
            if isinstance(raw, (dict, list)) or raw is None:
                raise ValueError(f"expected a string, got {raw!r}")
            value = str(raw) if not isinstance(raw, bool) else str(raw).lower()
        if self.choices is not None:
            folded = {c.lower(): c for c in self.choices}
            if str(value).lower() not in folded:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
            value = folded[str(value).lower()]
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}, got {value!r}")
        return value

    def show(self, value: Any) -> str:
        if self.secret and value:
            return "********"
        if self.type is Duration:
            return value if isinstance(value, str) else f"{value:g}s"
        return (
            repr(value)
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )


class Settings(Mapping[str, Any]):
    """Resolved settings: a read-only mapping of dotted keys to typed values."""

    def __init__(
        self,
        values: dict[str, Any],
        schema: dict[str, Setting],
        sources: dict[str, str],
        config_file: Path | None,
    ) -> None:
        self._values = values
        self.schema = schema
        self.sources = sources
        self.config_file = config_file

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def section(self, prefix: str) -> dict[str, Any]:
        """``{"path": …}`` for prefix ``aio.store.sqlite``: the keys under it, prefix removed."""
        head = prefix + "."
        return {k[len(head) :]: v for k, v in self._values.items() if k.startswith(head)}

    def describe(self) -> list[tuple[str, str, str]]:
        """(key, shown value, source) for each key, secrets masked."""
        return [
            (k, self.schema[k].show(v), self.sources[k]) for k, v in sorted(self._values.items())
        ]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in data.items():
        key = f"{prefix}{str(k).lower()}"
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _load_file_and_env(config_file: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the YAML file and the ``RESONATE_*`` environment through dynaconf, flattened."""
    from dynaconf import Dynaconf

    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = Dynaconf(
                settings_files=[str(config_file)],
                environments=False,
                envvar_prefix="RESONATE_CONFIG_FILE_ONLY",
                merge_enabled=True,
            )
            file_values = dict(_flatten(loaded.as_dict()))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"cannot read config file {config_file}: {first}") from None
    env = Dynaconf(
        settings_files=[], environments=False, envvar_prefix=ENV_PREFIX, merge_enabled=True
    ).as_dict()
    env_values = dict(_flatten({k: v for k, v in env.items() if k.upper() not in FOREIGN_ENV}))
    return file_values, env_values


def _keys_hint(key: str, schema: Mapping[str, Setting]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_settings(
    schema_items: Iterable[Setting],
    cli: Mapping[str, Any],
    config_file: str | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve every setting. ``cli`` maps dotted keys to raw flag values (unset flags omitted).

    ``config_file`` is ``--config``; without it, ``resonate.yaml`` in ``cwd`` is read if present.
    """
    schema: dict[str, Setting] = {}
    for s in schema_items:
        if s.key in schema and schema[s.key] != s:
            raise ConfigError(f"setting '{s.key}' is declared twice with different definitions")
        schema.setdefault(s.key, s)
    path: Path | None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {config_file}")
    else:
        candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
        path = candidate if candidate.is_file() else None
    file_values, env_values = _load_file_and_env(path)

    values = {k: s.coerce(s.default) for k, s in schema.items()}
    sources = dict.fromkeys(schema, "default")
    layers = (
        (file_values, lambda k: f"config file {path}"),
        (env_values, lambda k: f"environment variable {schema[k].env if k in schema else k}"),
        (cli, lambda k: f"flag {schema[k].flag}"),
    )
    for layer, origin in layers:
        for key, raw in layer.items():
            setting = schema.get(key)
            if setting is None:
                where = (
                    origin(key)
                    if layer is not env_values
                    else f"environment variable {ENV_PREFIX}_{'__'.join(key.upper().split('.'))}"
                )
                raise ConfigError(f"unknown setting '{key}' in {where}{_keys_hint(key, schema)}")
            try:
                values[key] = setting.coerce(raw)
            except ValueError as e:
                shown = "" if setting.secret else f": {e}"
                raise ConfigError(f"invalid value for '{key}' from {origin(key)}{shown}") from None
            sources[key] = origin(key)
    return Settings(values, schema, sources, path)


def reference_table(schema: Iterable[Setting]) -> str:
    """The Markdown table of every setting (key, flag, environment variable, default, meaning)."""
    lines = ["| key | flag | environment variable | default | meaning |", "|---|---|---|---|---|"]
    for s in sorted(schema, key=lambda s: s.key):
        default = "" if s.secret else s.show(s.default)
        lines.append(f"| `{s.key}` | `{s.flag}` | `{s.env}` | `{default}` | {s.help} |")
    return "\n".join(lines)
