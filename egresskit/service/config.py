"""Service configuration from flags, environment and YAML, in that order of precedence.

Every setting has one name used by all three sources: the YAML key and the
flag's argparse `dest` are the field name (`api_key`), the environment
variable is `EGRESSKIT_` + the upper-cased name (`EGRESSKIT_API_KEY`). A flag
or variable that is absent (None / unset) falls through to the next source.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from livekit.protocol import room as room_pb

from egresskit.egress.admission import CpuCosts
from egresskit.netpolicy import NetworkPolicy

DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
ENV_PREFIX = "EGRESSKIT_"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of `egresskit serve`. Its repr never shows a secret."""

    port: int = 7880
    bind: str = "127.0.0.1"
    api_key: str = ""
    api_secret: str = field(default="", repr=False)
    output_dir: Path = Path("recordings")
    webhook_urls: tuple[str, ...] = ()
    max_duration_s: float = 0.0  # 0 = no session limit
    max_concurrent: int = 0  # 0 = no limit on egresses running at once
    # LiveKit's `cpu_cost` keys (max_cpu_utilization, room_composite_cpu_cost, ...): admission
    # by CPU cost; unset keys keep egresskit's measured defaults (egresskit/egress/admission.py).
    cpu_cost: Mapping[str, float] = field(default_factory=dict)
    storage: Mapping[str, Any] = field(default_factory=dict, repr=False)
    backup_storage: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # Each upload is retried with exponential backoff before the backup storage is tried.
    upload_attempts: int = 5
    upload_initial_delay: float = 0.1  # seconds before the second attempt, doubling after
    upload_max_delay: float = 5.0
    extra_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Tokens whose expiry is further away than this are refused; 0 = no limit (as LiveKit).
    max_token_ttl_s: float = 0.0
    # An embedded room empty this long, with no egress waiting on it, is dropped.
    empty_room_timeout_s: float = 300.0
    # A web egress with await_start_signal fails if its page logs no START_RECORDING by then.
    web_start_timeout_s: float = 30.0
    # A RoomEgress in YAML form: embedded rooms record their tracks / participants.
    auto_egress: Mapping[str, Any] = field(default_factory=dict, repr=False)
    dev: bool = False
    # The web console at / (and /files): always on in dev mode, otherwise only when set.
    console: bool = False
    log_level: str = "info"
    # A LiveKit server whose rooms `room_name` names (YAML `livekit: {url, api_key, api_secret}`).
    livekit_url: str = ""
    livekit_api_key: str = ""
    livekit_api_secret: str = field(default="", repr=False)
    # Where destinations named in requests may be: {allow: [CIDR...], deny: [CIDR...]}.
    egress_network: Mapping[str, Any] = field(default_factory=dict)

    @property
    def console_enabled(self) -> bool:
        return self.dev or self.console

    @property
    def keys(self) -> dict[str, str]:
        """Every API key the service accepts, with its secret."""
        return {**self.extra_keys, self.api_key: self.api_secret}

    @property
    def network_policy(self) -> NetworkPolicy:
        """The policy for destinations named in requests (non-public ranges denied unless dev)."""
        return NetworkPolicy.from_config(self.egress_network, dev=self.dev)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr
        )
        hidden = f"storage={sorted(self.storage)}, backup_storage={sorted(self.backup_storage)}"
        return f"ServiceConfig({shown}, {hidden}, api_secret=<hidden>)"


_FIELDS = {f.name: f for f in dataclasses.fields(ServiceConfig)}
_YAML_ONLY = {"storage", "backup_storage", "extra_keys", "auto_egress", "cpu_cost"}


def load_config(
    flags: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    yaml_path: str | Path | None = None,
) -> ServiceConfig:
    """Merge defaults < YAML < environment < flags into a checked `ServiceConfig`.

    `yaml_path` defaults to the `config` flag, then `EGRESSKIT_CONFIG`.
    In dev mode a missing key/secret becomes `devkey`/`secret`.
    """
    flag_values = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    env = env or {}
    yaml_path = yaml_path or flag_values.get("config") or env.get(ENV_PREFIX + "CONFIG")
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(_read_yaml(Path(yaml_path)))
    for name in _FIELDS.keys() - _YAML_ONLY:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _from_env(name, raw)
    for name, value in flag_values.items():
        if name in _FIELDS and value is not None:
            values[name] = value
    return _build(values, source_hint=str(yaml_path) if yaml_path else None)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        position = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{position}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings")
    # `keys` is the name LiveKit config files use for extra API keys.
    if "keys" in data:
        data["extra_keys"] = data.pop("keys")
    if "livekit" in data:
        data.update(_livekit_section(path, data.pop("livekit")))
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(map(str, unknown))}")
    return data


def _livekit_section(path: Path, section: Any) -> dict[str, Any]:
    """YAML `livekit: {url, api_key, api_secret}` as the flat livekit_* settings."""
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"config file {path}: livekit must be a mapping of url, api_key, api_secret"
        )
    unknown = sorted(set(section) - {"url", "api_key", "api_secret"})
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown livekit setting(s) {', '.join(map(str, unknown))}"
        )
    return {f"livekit_{name}": value for name, value in section.items()}


def _from_env(name: str, raw: str) -> Any:
    if name == "webhook_urls":
        return [url.strip() for url in raw.split(",") if url.strip()]
    if name in ("dev", "console"):
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be true or false, not {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    if name == "egress_network":
        try:
            return yaml.safe_load(raw)  # a flow mapping: {allow: [10.0.0.0/8]}
        except yaml.YAMLError:
            raise ConfigError(f"{ENV_PREFIX}EGRESS_NETWORK must be a YAML mapping") from None
    return raw


def _build(values: dict[str, Any], source_hint: str | None) -> ServiceConfig:
    config: dict[str, Any] = {}
    for name, value in values.items():
        config[name] = _coerce(name, value)
    if config.get("dev"):
        config["api_key"] = config.get("api_key") or DEV_API_KEY
        config["api_secret"] = config.get("api_secret") or DEV_API_SECRET
    if not config.get("api_key") or not config.get("api_secret"):
        hint = f" or api_key/api_secret in {source_hint}" if source_hint else ""
        raise ConfigError(
            "an API key and secret are required: set --api-key/--api-secret, "
            f"{ENV_PREFIX}API_KEY/{ENV_PREFIX}API_SECRET{hint}, or use --dev"
        )
    livekit = [config.get(f"livekit_{n}") for n in ("url", "api_key", "api_secret")]
    if any(livekit) and not all(livekit):
        raise ConfigError(
            "a LiveKit server needs all of --livekit-url, --livekit-api-key and "
            "--livekit-api-secret (or livekit: {url, api_key, api_secret})"
        )
    return ServiceConfig(**config)


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one setting, with an error naming it."""
    try:
        if name == "port":
            port = _int(value)
            if not 0 <= port <= 65535:
                raise ValueError("must be between 0 and 65535")
            return port
        if name == "livekit_url":
            if not isinstance(value, str) or not value.startswith(
                ("ws://", "wss://", "http://", "https://")
            ):
                raise ValueError("must be a ws://, wss://, http:// or https:// URL")
            return value
        if name in ("bind", "api_key", "api_secret", "livekit_api_key", "livekit_api_secret"):
            if not isinstance(value, str):
                raise ValueError("must be a string")
            return value
        if name == "output_dir":
            return Path(str(value)).expanduser()
        if name == "webhook_urls":
            urls = [value] if isinstance(value, str) else list(value)
            if not all(
                isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls
            ):
                raise ValueError("must be http:// or https:// URLs")
            return tuple(urls)
        if name == "max_duration_s":
            duration = float(value)
            if not duration >= 0:
                raise ValueError("must be 0 (no limit) or a positive number of seconds")
            return duration
        if name == "max_concurrent":
            limit = _int(value)
            if limit < 0:
                raise ValueError("must be 0 (no limit) or positive")
            return limit
        if name == "cpu_cost":
            if not isinstance(value, Mapping):
                raise ValueError("must be a mapping of cost keys to cores")
            CpuCosts.from_mapping(value)
            return dict(value)
        if name == "upload_attempts":
            attempts = _int(value)
            if attempts < 1:
                raise ValueError("must be at least 1")
            return attempts
        if name == "web_start_timeout_s":
            seconds = float(value)
            if not seconds > 0:
                raise ValueError("must be a positive number of seconds")
            return seconds
        if name in ("max_token_ttl_s", "empty_room_timeout_s"):
            seconds = float(value)
            if not seconds >= 0:
                raise ValueError("must be a non-negative number of seconds")
            return seconds
        if name in ("upload_initial_delay", "upload_max_delay"):
            delay = float(value)
            if not delay >= 0:
                raise ValueError("must be a non-negative number of seconds")
            return delay
        if name == "auto_egress":
            if not isinstance(value, Mapping):
                raise ValueError("must be a mapping (a RoomEgress: tracks, participant)")
            try:
                json_format.ParseDict(dict(value), room_pb.RoomEgress())
            except json_format.ParseError as exc:
                raise ValueError(str(exc)) from None
            return dict(value)
        if name in ("storage", "backup_storage", "extra_keys"):
            if not isinstance(value, Mapping):
                raise ValueError("must be a mapping")
            return dict(value)
        if name == "egress_network":
            if not isinstance(value, Mapping):
                raise ValueError("must be a mapping: {allow: [networks], deny: [networks]}")
            NetworkPolicy.from_config(value)
            return dict(value)
        if name in ("dev", "console"):
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            return value
        if name == "log_level":
            level = str(value).lower()
            if level not in LOG_LEVELS:
                raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
            return level
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting {name}: {exc}") from None
    raise ConfigError(f"unknown setting {name}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"must be an integer, not {value!r}")
