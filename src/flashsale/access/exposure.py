"""Fail closed: a server reachable from the network never starts with its admin side open.

Checked by `flashsale serve` before anything starts. Off loopback (SERVER_HOST is not 127.0.0.0/8,
::1 or localhost) the server needs operator keys, none of them weak (API_KEY shorter than 32
characters, or `.env.example`'s placeholder as either setting); ALLOW_OPEN_ADMIN=true starts it
open anyway, with a warning every time. On loopback nothing is required: the quick start.
"""

from __future__ import annotations

import structlog

from flashsale.access.operators import MIN_KEY_LENGTH, PLACEHOLDER_KEY, digest
from flashsale.config import ConfigError, Settings, is_loopback

log = structlog.get_logger()


def weak_key(settings: Settings) -> str | None:
    """What is wrong with the configured keys, if anything."""
    if settings.api_key is not None:
        secret = settings.api_key.get_secret_value()
        if secret == PLACEHOLDER_KEY:
            return "API_KEY is .env.example's placeholder: make one with `flashsale keys new`"
        if len(secret) < MIN_KEY_LENGTH:
            return f"API_KEY is shorter than {MIN_KEY_LENGTH} characters"
    if any(key.sha256 == digest(PLACEHOLDER_KEY) for key in settings.api_keys):
        return "API_KEYS holds .env.example's placeholder: make keys with `flashsale keys new`"
    return None


def check_exposure(settings: Settings) -> None:
    """Raise ConfigError (one line) when this server must not start as configured."""
    host = settings.server_host
    if is_loopback(host):
        return
    problem = weak_key(settings)
    if problem:
        raise ConfigError(f"SERVER_HOST={host} is reachable from the network and {problem}")
    if not settings.operator_keys:
        if not settings.allow_open_admin:
            raise ConfigError(
                f"SERVER_HOST={host} is reachable from the network but no operator key is set: "
                "set API_KEYS (or API_KEY; `flashsale keys new` makes one), or "
                "ALLOW_OPEN_ADMIN=true to serve the admin side to anyone"
            )
        log.warning(
            "server.admin_open",
            host=host,
            reason="ALLOW_OPEN_ADMIN=true and no operator key: anyone who reaches this server "
            "can change products and read every order",
        )
    if settings.buyer_auth == "none":
        log.warning(
            "server.buyers_unverified",
            host=host,
            reason="BUYER_AUTH=none: buyer_id is whatever a request says, so max_per_buyer "
            "does not stop one client buying as many buyers",
        )
