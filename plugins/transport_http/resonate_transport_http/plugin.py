"""Hooks of the http transport: settings and the push transport for ``http(s)://`` addresses."""

from __future__ import annotations

import logging

from resonate_server import Duration, Setting, hookimpl
from resonate_server.app import Server
from resonate_server.config import Settings
from resonate_server.transport import Transport

from .push import HttpPush, PushConfig, Reporter

log = logging.getLogger("resonate.transport.http")

P = "transports.http."


@hookimpl
def resonate_config_settings() -> list[Setting]:
    return [
        Setting(P + "enable", bool, True, "POST messages to http(s):// addresses."),
        Setting(
            P + "concurrency",
            int,
            256,
            "Requests in flight at once; also the size of the send queue.",
            minimum=1,
        ),
        Setting(P + "connect_timeout", Duration, "10s", "Limit for connecting to a worker."),
        Setting(
            P + "request_timeout",
            Duration,
            "30s",
            "Limit for one whole attempt (connect, send, answer).",
        ),
        Setting(
            P + "retries",
            int,
            3,
            "Retries after a failed first attempt (non-2xx or no answer).",
            minimum=0,
        ),
        Setting(P + "backoff", Duration, "1s", "Base wait before a retry; doubles per retry."),
        Setting(P + "backoff_max", Duration, "30s", "Longest wait before a retry."),
        Setting(
            P + "max_retrying",
            int,
            1000,
            "Messages allowed to wait for a retry at once; further failures are given up.",
            minimum=0,
        ),
        Setting(
            P + "auth.mode",
            str,
            "none",
            "Outbound auth: none, or bearer (sends the token in auth.header).",
            choices=("none", "bearer"),
        ),
        Setting(P + "auth.token", str, "", "Token for bearer mode.", secret=True),
        Setting(P + "auth.header", str, "Authorization", "Header that carries the token."),
    ]


@hookimpl
def resonate_config_validate(settings: Settings) -> list[str]:
    errors = []
    for key in ("connect_timeout", "request_timeout", "backoff", "backoff_max"):
        if settings[P + key] <= 0:
            errors.append(f"'{P}{key}' must be greater than 0")
    if settings[P + "auth.mode"] == "bearer":
        if not settings[P + "auth.token"]:
            errors.append(f"'{P}auth.mode' is bearer but '{P}auth.token' is empty")
        header = settings[P + "auth.header"]
        if not header or any(c in header for c in " \t\r\n:"):
            errors.append(f"'{P}auth.header' must be a header name such as Authorization")
    return errors


def config_of(settings: Settings) -> PushConfig:
    bearer = settings[P + "auth.mode"] == "bearer"
    return PushConfig(
        enable=settings[P + "enable"],
        concurrency=settings[P + "concurrency"],
        connect_timeout=settings[P + "connect_timeout"],
        request_timeout=settings[P + "request_timeout"],
        retries=settings[P + "retries"],
        backoff=settings[P + "backoff"],
        backoff_max=settings[P + "backoff_max"],
        max_retrying=settings[P + "max_retrying"],
        auth_header=settings[P + "auth.header"],
        auth_token=settings[P + "auth.token"] if bearer else "",
    )


def reporter_of(server: Server) -> Reporter | None:
    """``server.report_delivery`` when the core provides it (see docs/delivery.md)."""
    report: Reporter | None = getattr(server, "report_delivery", None)
    if report is None:
        log.debug("this core has no Server.report_delivery; http outcomes are not reported")
    return report


@hookimpl
def resonate_transports(server: Server) -> list[Transport]:
    return [HttpPush(config_of(server.settings), reporter_of(server))]
