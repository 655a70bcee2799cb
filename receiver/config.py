"""Configuration: a TOML file overlaid by ``RECEIVER_*`` environment variables.

Every key is validated at start-up; a bad or missing one raises :class:`ConfigError` whose
message is a single line naming it, which the CLI prints before exiting.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

ENV_PREFIX = "RECEIVER_"
CONFIG_ENV = "RECEIVER_CONFIG"
MiB = 1024 * 1024


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _cidrs(value: list[str]) -> list[str]:
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"not a CIDR network: {net!r}") from None
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FetchSettings(_Section):
    allowed_networks: list[str] = Field(default_factory=list)
    max_bytes: int = Field(default=64 * MiB, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    total_timeout: float = Field(default=300.0, gt=0)
    max_redirects: int = Field(default=5, ge=0)

    _split = field_validator("allowed_networks", mode="before")(_split_commas)
    _networks = field_validator("allowed_networks")(_cidrs)


class WorkerSettings(_Section):
    concurrency: int = Field(default=8, ge=1, le=512)
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=12, ge=1)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_max_seconds: float = Field(default=60.0, ge=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    reconcile_interval: float = Field(default=5.0, gt=0)
    delivery_retention_days: float = Field(default=8.0, ge=7.0)
    # Finished (done or dead) archive jobs and notifications, and the events of final tasks,
    # are deleted this long after they last changed; tasks themselves are kept.
    job_retention_days: float = Field(default=30.0, gt=0)
    event_retention_days: float = Field(default=90.0, gt=0)


class ServerSettings(_Section):
    max_body_bytes: int = Field(default=1 * MiB, gt=0)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    cors_origins: list[str] = Field(default_factory=list)
    access_token_seconds: int = Field(default=3600, gt=0)
    signature_tolerance_seconds: int = Field(default=300, gt=0)
    max_metadata_bytes: int = Field(default=16 * 1024, gt=0)
    access_log: bool = True
    # The API reference page (/docs) loads Redoc from here; /openapi.json itself works offline.
    docs_script_url: str = (
        "https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"  # Redoc's documented CDN
    )
    # Slow clients: a request's headers, and each read of its body, must arrive in time.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_read_timeout_seconds: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    keepalive_seconds: float = Field(default=5.0, gt=0)

    _split = field_validator("trusted_proxies", "cors_origins", mode="before")(_split_commas)


class ConsoleSettings(_Section):
    """The web console at ``/ui``: who may sign in, for how long, and whether it is on."""

    enabled: bool = True
    session_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 24 * 3600)
    # Keys that may sign in to see the console but never replay or redeliver. A key listed
    # here and in ``api_keys`` is read-only in the console (and still a full API key).
    read_only_keys: list[str] = Field(default_factory=list)
    thumbnail_px: int = Field(default=512, ge=64, le=512)
    presign_seconds: int = Field(default=300, gt=0, le=3600)

    _split = field_validator("read_only_keys", mode="before")(_split_commas)


class NotifySettings(_Section):
    secret: str | None = None
    default_url: str | None = None
    # Networks notify_url may reach although not public (the fetcher has its own list).
    allowed_networks: list[str] = Field(default_factory=list)
    presign_seconds: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    timeout: float = Field(default=10.0, gt=0)
    retry_hours: float = Field(default=26.0, ge=24.0)
    retry_base_seconds: float = Field(default=5.0, ge=0)
    retry_max_seconds: float = Field(default=1800.0, ge=0)
    concurrency: int = Field(default=16, ge=1, le=256)

    _split = field_validator("allowed_networks", mode="before")(_split_commas)
    _networks = field_validator("allowed_networks")(_cidrs)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("whsec_"):
            raise ValueError("must start with 'whsec_' (a Standard Webhooks secret)")
        return value


class ProvenanceSettings(_Section):
    """What the archive records about each image's origin (sidecar ``provenance``, ``.xmp``)."""

    read_c2pa: bool = True
    max_bytes: int = Field(default=32 * MiB, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)
    trust_anchors: str | None = None
    xmp_sidecar: bool = True

    @field_validator("trust_anchors")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                text = Path(value).read_text(encoding="utf-8")
            except (OSError, UnicodeError) as exc:
                raise ValueError(f"cannot read {value!r}: {exc}") from None
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ValueError(f"{value!r} holds no PEM certificate")
        return value


class FilesystemSettings(_Section):
    type: Literal["filesystem"]
    path: str
    prefix: str = ""


def _check_endpoint(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL with its scheme, e.g. https://{value}")
    return value


class S3Settings(_Section):
    type: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    storage_class: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # "auto": boto3's defaults on AWS, "when_required" on any other endpoint (see storage.md).
    checksum: Literal["auto", "when_supported", "when_required"] = "auto"
    # Send the SHA-256 the fetcher computed as x-amz-checksum-sha256 (the store verifies it,
    # the client does not hash the body again); off for a store that rejects the header.
    sha256_checksum: bool = True
    # Create-only writes with If-None-Match; "off" falls back to head-then-put.
    conditional_writes: bool = True
    multipart_threshold: int = Field(default=16 * MiB, ge=5 * MiB)
    part_size: int = Field(default=8 * MiB, ge=5 * MiB)
    max_threads: int = Field(default=16, ge=1, le=256)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Single-part PUTs signed with botocore's SigV4 and sent on the client's pool, without
    # boto3's per-call machinery (a third of the CPU per archived image); off: put_object.
    lean_put: bool = True

    _endpoint = field_validator("endpoint_url")(_check_endpoint)


class BunnySettings(_Section):
    type: Literal["bunny"]
    zone: str
    password: str
    region: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    cdn_url: str | None = None

    _endpoint = field_validator("endpoint_url", "cdn_url")(_check_endpoint)


# One of the destination types, chosen by its ``type`` key.
DestinationSettings = Annotated[
    FilesystemSettings | S3Settings | BunnySettings, Field(discriminator="type")
]


class ProviderSettings(BaseModel):
    """Per-provider settings; unknown keys are the provider's own options."""

    model_config = ConfigDict(extra="allow")

    api_key: str | None = None
    base_url: str | None = None
    webhook_secret: str | None = None
    callback_grace_seconds: float | None = Field(default=None, ge=0)
    poll_interval: float | None = Field(default=None, gt=0)
    # Take a callback's outcome from a read of the task at the provider (None: the provider's
    # default, on where callbacks are unsigned).
    confirm_by_read: bool | None = None

    def option(self, key: str, default: Any = None) -> Any:
        return (self.model_extra or {}).get(key, default)


def _default_destinations() -> dict[str, DestinationSettings]:
    return {"local": FilesystemSettings(type="filesystem", path="archive")}


class Settings(_Section):
    public_url: str = "http://127.0.0.1:8000"
    secret_keys: list[str] = Field(min_length=1)
    ledger_url: str = "sqlite:///receiver.db"
    api_keys: list[str] = Field(default_factory=list)
    default_destination: str = "local"
    # The provider ``receiver submit`` uses without ``--provider``; none: the flag is required.
    default_provider: str | None = None
    destinations: dict[str, DestinationSettings] = Field(default_factory=_default_destinations)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    _split = field_validator("secret_keys", "api_keys", mode="before")(_split_commas)

    @field_validator("secret_keys")
    @classmethod
    def _keys_long(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 16:
                raise ValueError("each secret key must be at least 16 characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("ledger_url")
    @classmethod
    def _ledger(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "memory://")):
            raise ValueError("must start with sqlite:///, postgresql:// or memory://")
        return value

    def model_post_init(self, _context: Any) -> None:
        if self.default_destination not in self.destinations:
            raise ConfigError(
                f"default_destination: {self.default_destination!r} is not a configured "
                f"destination (have: {', '.join(sorted(self.destinations)) or 'none'})"
            )

    def provider(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or ProviderSettings()


def _set_path(tree: dict[str, Any], path: list[str], value: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


# Variables of the client commands (submit, status, tasks), never server settings.
CLIENT_ENV = frozenset({"RECEIVER_URL", "RECEIVER_API_KEY"})


def _env_items(environ: Mapping[str, str]) -> Iterator[tuple[str, list[str], str]]:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or key in CLIENT_ENV:
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if path:
            yield key, path, value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``RECEIVER_DESTINATIONS__S3__BUCKET=x`` → ``{"destinations": {"s3": {"bucket": x}}}``."""
    tree: dict[str, Any] = {}
    for _, path, value in _env_items(environ):
        _set_path(tree, path, value)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_UNION_TAGS = {"filesystem", "s3", "bunny"}


def _loc(err: Any) -> list[str]:
    parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    # Drop the discriminator tag pydantic inserts into union paths (destinations.x.s3.bucket).
    if len(parts) > 2 and parts[0] == "destinations" and parts[2] in _UNION_TAGS:
        del parts[2]
    return parts


def _fields_at(parts: list[str]) -> list[str]:
    """The keys a section accepts, for "did you mean" (``parts`` ends with the bad key)."""
    model: Any = Settings
    path = parts[:-1]
    i = 0
    while i < len(path):
        field = model.model_fields.get(path[i]) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        if path[i] in ("destinations", "providers"):
            if i + 1 >= len(path):
                return []
            if path[i] == "providers":
                return [*ProviderSettings.model_fields, *_provider_options(path[i + 1])]
            return sorted(
                {
                    f
                    for m in (FilesystemSettings, S3Settings, BunnySettings)
                    for f in m.model_fields
                }
            )
        model = field.annotation
        i += 1
    return list(getattr(model, "model_fields", {}))


def _near(word: str, choices: Iterable[str]) -> str:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {found[0]!r}?" if found else ""


class _Sources:
    """Where each key came from: the variable that set it, else the file, else defaults."""

    def __init__(self, environ: Mapping[str, str], file: str | None) -> None:
        self.env = {tuple(path): key for key, path, _ in _env_items(environ)}
        self.file = file

    def of(self, parts: list[str]) -> str:
        for n in range(len(parts), 0, -1):
            key = self.env.get(tuple(parts[:n]))
            if key is not None:
                return f"environment variable {key}"
        below = [key for path, key in self.env.items() if list(path[: len(parts)]) == parts]
        if below:
            return f"environment variable {sorted(below)[0]}"
        if self.file:
            return self.file
        name = ENV_PREFIX + "__".join(p.upper() for p in parts)
        return f"not set; put it in the config file or set {name}"


def _one(err: Any, sources: _Sources) -> str:
    parts = _loc(err)
    loc = ".".join(parts) or "configuration"
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _near(parts[-1], _fields_at(parts)) if parts else "unknown key"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg} [{sources.of(parts)}]"


def _describe(exc: ValidationError, sources: _Sources) -> str:
    """One line: the first error in full (an unknown key first, as it often explains a
    missing one), then the keys of the others."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = _one(errors[0], sources)
    rest = [".".join(_loc(e)) or "configuration" for e in errors[1:]]
    return first + (f" (also: {', '.join(rest)})" if rest else "")


def _provider_options(name: str) -> tuple[str, ...]:
    from .providers import REGISTRY, provider_class

    if name not in REGISTRY:
        return ()
    return tuple(provider_class(name).options or ())


def _check_providers(settings: Settings, sources: _Sources) -> None:
    """Unknown provider sections and misspelt options stop the start, naming the key."""
    from .providers import REGISTRY, provider_class

    if settings.default_provider is not None and settings.default_provider not in REGISTRY:
        raise ConfigError(
            f"default_provider: unknown provider {settings.default_provider!r}"
            f"{_near(settings.default_provider, REGISTRY)} [{sources.of(['default_provider'])}]"
        )
    for name, conf in settings.providers.items():
        where = ["providers", name]
        if name not in REGISTRY:
            raise ConfigError(
                f"providers.{name}: unknown provider{_near(name, REGISTRY)} "
                f"(known: {', '.join(sorted(REGISTRY))}) [{sources.of(where)}]"
            )
        declared = provider_class(name).options
        common = list(ProviderSettings.model_fields)
        for key in conf.model_extra or {}:
            known = [*common, *(declared or ())]
            if key in known:
                continue
            hint = _near(key, known)
            if declared is not None or hint:
                raise ConfigError(
                    f"providers.{name}.{key}: unknown option{hint} "
                    f"(known: {', '.join(sorted(known))}) [{sources.of([*where, key])}]"
                )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), overlay the environment, validate."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV)
    raw: dict[str, Any] = dict(defaults or {})
    source = "environment"
    if path:
        file = Path(path)
        source = str(file)
        try:
            raw = _merge(raw, tomllib.loads(file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    raw = _merge(raw, env_overrides(environ))
    sources = _Sources(environ, source if path else None)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    _check_providers(settings, sources)
    return settings
