"""Configuration from environment variables (the seed's table plus our additions).

Every variable is validated at start-up; an invalid value stops the process with one line naming
the variable (see `ConfigError`). The database is chosen by precedence: `DATABASE_URL`, else the
seed's `DB_*` variables when `DB_HOST` is set, else an embedded PostgreSQL under `DATA_DIR`.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flashsale.access.operators import LEGACY_KEY_NAME, OperatorKey, digest, parse_api_keys
from flashsale.errors import CommandError

Port = Annotated[int, Field(ge=1, le=65535)]
# Public-key signature algorithms a buyer token may use (never `none`, never an HMAC).
SIGNATURE_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ConfigError(CommandError):
    """An environment variable has an invalid value; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # HTTP server
    server_host: str = "127.0.0.1"
    server_port: Port = 8080
    # Measured on 2 cores with flash-sale mode on: 2 processes serve 1.35-1.6x what 1 does.
    web_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Operators (access/operators.py): named keys with roles; API_KEY is one more admin key.
    # Off loopback the server refuses to start without a key unless ALLOW_OPEN_ADMIN is set.
    api_key: SecretStr | None = None
    api_keys: Annotated[tuple[OperatorKey, ...], NoDecode] = ()
    allow_open_admin: bool = False
    # Buyers (access/buyers.py): `none` takes buyer_id from the body (the seed's contract);
    # `jwt` takes it from an access token signed by the shop's identity provider.
    buyer_auth: Literal["none", "jwt"] = "none"
    buyer_jwks_url: str | None = None
    buyer_jwt_public_key_file: Path | None = None
    buyer_jwt_issuer: str | None = None
    buyer_jwt_audience: str | None = None
    buyer_jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ("RS256", "ES256", "EdDSA")
    buyer_jwt_leeway_s: Annotated[int, Field(ge=0, le=300)] = 30
    buyer_jwks_cache_s: Annotated[int, Field(ge=1, le=86400)] = 300
    max_body_bytes: Annotated[int, Field(ge=1024, le=100 * 1024 * 1024)] = 64 * 1024
    # `POST /transactions/import`'s own limit (counted as the body streams in)
    import_max_bytes: Annotated[int, Field(ge=1024, le=2**40)] = 2**30

    # Database: DATABASE_URL, else DB_* when DB_HOST is set, else embedded under DATA_DIR
    database_url: str | None = None
    db_host: str | None = None
    db_port: Port = 5432
    db_user: str = "postgres"
    db_password: SecretStr = SecretStr("postgres")
    db_name: str = "indico"
    data_dir: Path = Path(".flashsale")
    db_pool_size: Annotated[int, Field(ge=1, le=500)] = 8
    db_connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    db_statement_timeout_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 5_000
    auto_migrate: bool = True

    # Metrics: `flashsale worker` serves /metrics on this port; the API serves it on SERVER_PORT
    metrics_port: Port = 9091
    # Stock is exported for this many products (the most recently updated): bounded cardinality
    metrics_stock_products: Annotated[int, Field(ge=0, le=1000)] = 20

    # Logging
    log_level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # Orders
    idempotency_ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400
    # Flash-sale mode (orders/coalescer.py): per-product batches; off = one transaction per order
    order_coalescing: bool = True
    order_batch_max: Annotated[int, Field(ge=1, le=10_000)] = 256
    order_queue_max_per_product: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    order_queue_max_total: Annotated[int, Field(ge=1, le=10_000_000)] = 16384
    # Sold-out fast path (orders/sold_out.py): how long a process may answer 409 for a sold-out
    # product without asking the database; a restock reaches every process at once by
    # LISTEN/NOTIFY, this is the bound if a notification is lost. 0 turns the fast path off.
    sold_out_cache_s: Annotated[float, Field(ge=0, le=60)] = 1.0

    # Settlement jobs (seed semantics)
    job_workers: Annotated[int, Field(ge=1, le=64)] = 8
    job_batch_size: Annotated[int, Field(ge=100, le=10_000_000)] = 10_000
    job_queue_size: Annotated[int, Field(ge=1, le=100_000)] = 100
    # Settlement job workers (procrastinate): where and how jobs run, and how failures are detected
    embedded_worker: bool = True
    job_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    job_shutdown_grace_s: Annotated[float, Field(ge=0, le=3600)] = 5.0
    job_stalled_after_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    job_sweep_interval_s: Annotated[int, Field(ge=1, le=60)] = 10
    # Reports (CSV) are stored in PostgreSQL; the sweep deletes them this long after their job
    report_retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    # Open `GET /jobs/{id}/events` streams per server process; beyond, 503 TOO_MANY_STREAMS
    job_event_streams_max: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @field_validator("log_level", "log_format", "buyer_auth", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", "buyer_jwt_algorithms", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator(
        "database_url",
        "db_host",
        "api_key",
        "buyer_jwks_url",
        "buyer_jwt_public_key_file",
        "buyer_jwt_issuer",
        "buyer_jwt_audience",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("buyer_jwt_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        refused = [name for name in value if name not in SIGNATURE_ALGORITHMS]
        if refused or not value:
            raise ValueError(
                f"not a public-key signature algorithm: {', '.join(refused) or '(none given)'}; "
                f"choose from {', '.join(SIGNATURE_ALGORITHMS)}"
            )
        return value

    @field_validator("buyer_jwks_url")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            local = parts.scheme == "http" and is_loopback(parts.hostname or "")
            if not (parts.scheme == "https" or local) or not parts.hostname:
                raise ValueError("must be an https:// URL (http:// only on a loopback address)")
        return value

    @field_validator("buyer_jwt_public_key_file")
    @classmethod
    def _readable_key_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            from flashsale.access.buyers import check_key_file  # only when one is configured

            check_key_file(value)
        return value

    @model_validator(mode="after")
    def _buyer_auth_complete(self) -> Settings:
        if self.buyer_auth != "jwt":
            return self
        if (self.buyer_jwks_url is None) == (self.buyer_jwt_public_key_file is None):
            raise ValueError(
                "BUYER_AUTH=jwt needs one of BUYER_JWKS_URL or BUYER_JWT_PUBLIC_KEY_FILE"
            )
        if not self.buyer_jwt_issuer or not self.buyer_jwt_audience:
            raise ValueError("BUYER_AUTH=jwt needs BUYER_JWT_ISSUER and BUYER_JWT_AUDIENCE")
        return self

    @cached_property
    def operator_keys(self) -> tuple[OperatorKey, ...]:
        """API_KEYS, and API_KEY as one more admin key."""
        if self.api_key is None:
            return self.api_keys
        legacy = OperatorKey(LEGACY_KEY_NAME, "admin", digest(self.api_key.get_secret_value()))
        return (*self.api_keys, legacy)

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.query):
                raise ValueError(
                    "must be a PostgreSQL URL, postgresql://user:password@host:port/database"
                )
        return value

    @property
    def database_variables(self) -> str:
        """Which variables chose the configured database (for error messages)."""
        return "DATABASE_URL" if self.database_url else "DB_HOST, DB_PORT, DB_USER, DB_NAME"

    @cached_property
    def configured_database_url(self) -> str | None:
        """The external database URL, or None when the embedded PostgreSQL should be used."""
        if self.database_url:
            return self.database_url
        if self.db_host:
            user = quote(self.db_user, safe="")
            password = quote(self.db_password.get_secret_value(), safe="")
            return f"postgresql://{user}:{password}@{self.db_host}:{self.db_port}/{self.db_name}"
        return None


_SECRET_VARIABLES = {"API_KEY", "API_KEYS", "DB_PASSWORD", "DATABASE_URL"}


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError with one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule over several variables: the message names them
            raise ConfigError(f"invalid configuration: {message}") from None
        variable = str(first["loc"][0]).upper()
        shown = "" if variable in _SECRET_VARIABLES else f" (got {first['input']!r})"
        raise ConfigError(f"invalid configuration: {variable}: {message}{shown}") from None
