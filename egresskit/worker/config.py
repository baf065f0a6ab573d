"""`egresskit worker` settings, read from livekit/egress's own configuration file.

An existing egress.yaml works unchanged: LiveKit's keys (`api_key`,
`api_secret`, `ws_url`, `redis`, `cluster_id`, `health_port`,
`prometheus_port`, `log_level`, `s3`/`azure`/`gcp`/`alioss`, `cpu_cost`)
mean what they mean there; egresskit's own keys (`output_dir`, `storage`,
`backup_storage`, `max_duration_s`) sit beside them. Other LiveKit keys are
accepted and named once in the log, as not used by egresskit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from redis.asyncio.sentinel import Sentinel

from egresskit.egress.admission import CpuCosts
from egresskit.netpolicy import NetworkPolicy
from egresskit.service.config import LOG_LEVELS, ConfigError

log = logging.getLogger(__name__)

# livekit/egress's default-storage sections, each an egresskit storage backend of that name.
STORAGE_SECTIONS = ("s3", "azure", "gcp", "alioss")
# Redis keys read here; the others (timeouts, pool sizes, cluster) keep redis-py defaults.
REDIS_USED = frozenset(
    {
        "address",
        "username",
        "password",
        "db",
        "use_tls",
        "tls",
        "sentinel_master_name",
        "sentinel_username",
        "sentinel_password",
        "sentinel_addresses",
    }
)
# Every key of livekit/egress's redis section: the others pass validation, unused.
REDIS_KEYS = REDIS_USED | frozenset(
    {
        "cluster_addresses",
        "dial_timeout",
        "read_timeout",
        "write_timeout",
        "max_redirects",
        "pool_timeout",
        "pool_size",
    }
)
_USED = frozenset(
    {
        "api_key",
        "api_secret",
        "ws_url",
        "redis",
        "cluster_id",
        "health_port",
        "prometheus_port",
        "log_level",
        "cpu_cost",
        *STORAGE_SECTIONS,
        # egresskit's own
        "bind",
        "output_dir",
        "storage",
        "backup_storage",
        "max_duration_s",
        "drain_timeout_s",
        "egress_network",
    }
)


@dataclass(frozen=True)
class RedisSettings:
    address: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = field(default="", repr=False)
    sentinel_addresses: tuple[str, ...] = ()

    def client(self) -> aioredis.Redis:
        """A redis-py client for these settings (through Sentinel when it names a master)."""
        if self.sentinel_master_name:
            sentinel = Sentinel(
                [_host_port(a) for a in self.sentinel_addresses],
                sentinel_kwargs={
                    "username": self.sentinel_username or None,
                    "password": self.sentinel_password or None,
                },
                username=self.username or None,
                password=self.password or None,
                db=self.db,
                ssl=self.use_tls,
            )
            return sentinel.master_for(self.sentinel_master_name)
        host, port = _host_port(self.address)
        return aioredis.Redis(
            host=host,
            port=port,
            db=self.db,
            username=self.username or None,
            password=self.password or None,
            ssl=self.use_tls,
        )


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one `egresskit worker` (shared by its processes). No secret in its repr."""

    api_key: str
    api_secret: str = field(repr=False)
    ws_url: str
    redis: RedisSettings
    cluster_id: str = ""
    bind: str = "0.0.0.0"  # egresskit's: where the health and metrics ports listen
    health_port: int = 0  # 0 = no health endpoint
    prometheus_port: int = 0  # 0 = no metrics endpoint
    log_level: str = "info"
    output_dir: Path = Path("recordings")
    storage: Mapping[str, Any] = field(default_factory=dict, repr=False)
    backup_storage: Mapping[str, Any] = field(default_factory=dict, repr=False)
    max_duration_s: float = 0.0
    drain_timeout_s: float = 300.0  # SIGTERM waits this long for running egresses
    cpu_costs: CpuCosts = field(default_factory=CpuCosts)
    # Where destinations named in requests may be (as `egresskit serve`'s setting; no dev mode).
    egress_network: Mapping[str, Any] = field(default_factory=dict)
    unused: tuple[str, ...] = ()  # LiveKit keys present in the file that egresskit ignores

    @property
    def network_policy(self) -> NetworkPolicy:
        return NetworkPolicy.from_config(self.egress_network)


def load_worker_config(path: str | None, env: Mapping[str, str]) -> WorkerConfig:
    """The YAML of `--config`, else `EGRESS_CONFIG_FILE`, else the text of `EGRESS_CONFIG_BODY`;
    `LIVEKIT_API_KEY`/`LIVEKIT_API_SECRET`/`LIVEKIT_WS_URL` fill keys the file leaves out."""
    path = path or env.get("EGRESS_CONFIG_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        source = path
    elif env.get("EGRESS_CONFIG_BODY"):
        text, source = env["EGRESS_CONFIG_BODY"], "EGRESS_CONFIG_BODY"
    else:
        raise ConfigError(
            "no configuration: pass --config, EGRESS_CONFIG_FILE or EGRESS_CONFIG_BODY"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{source} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of settings")
    return parse_worker_config(data, env, source)


def parse_worker_config(
    data: Mapping[str, Any], env: Mapping[str, str], source: str
) -> WorkerConfig:
    def setting(name: str, value: Any, kind: type) -> Any:
        try:
            if kind is bool and not isinstance(value, bool):
                raise ValueError("must be true or false")
            return kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid setting {name}: {exc}") from None

    values: dict[str, Any] = {}
    for name, variable in (
        ("api_key", "LIVEKIT_API_KEY"),
        ("api_secret", "LIVEKIT_API_SECRET"),
        ("ws_url", "LIVEKIT_WS_URL"),
    ):
        values[name] = setting(name, data.get(name) or env.get(variable, ""), str)
    missing = [n for n in ("api_key", "api_secret", "ws_url") if not values[n]]
    if missing:
        raise ConfigError(f"{source}: {', '.join(missing)} required (the LiveKit server to record)")
    if not values["ws_url"].startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError(f"{source}: invalid setting ws_url: must be a ws:// or wss:// URL")
    unused: list[str] = sorted(str(k) for k in set(data) - _USED)

    redis_section = data.get("redis") or {}
    if (
        not isinstance(redis_section, Mapping)
        or not redis_section.get("address")
        and not (redis_section.get("sentinel_master_name"))
    ):
        raise ConfigError(f"{source}: redis: {{address: host:port}} is required")
    unknown = sorted(set(redis_section) - REDIS_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown redis setting(s) {', '.join(unknown)}")
    unused += [f"redis.{k}" for k in sorted(set(redis_section) - REDIS_USED)]
    tls = redis_section.get("tls") or {}
    values["redis"] = RedisSettings(
        address=setting("redis.address", redis_section.get("address", ""), str),
        username=setting("redis.username", redis_section.get("username", ""), str),
        password=setting("redis.password", redis_section.get("password", ""), str),
        db=setting("redis.db", redis_section.get("db", 0), int),
        use_tls=setting(
            "redis.use_tls",
            bool(redis_section.get("use_tls", False)) or bool(tls.get("enabled", False)),
            bool,
        ),
        sentinel_master_name=str(redis_section.get("sentinel_master_name", "")),
        sentinel_username=str(redis_section.get("sentinel_username", "")),
        sentinel_password=str(redis_section.get("sentinel_password", "")),
        sentinel_addresses=tuple(str(a) for a in redis_section.get("sentinel_addresses") or ()),
    )

    for name in ("cluster_id", "bind"):
        if name in data:
            values[name] = setting(name, data[name] or "", str)
    for name in ("health_port", "prometheus_port"):
        if name in data:
            values[name] = setting(name, data[name] or 0, int)
    if "log_level" in data:
        level = str(data["log_level"]).lower()
        values["log_level"] = level if level in LOG_LEVELS else "info"
    if "output_dir" in data:
        values["output_dir"] = Path(str(data["output_dir"])).expanduser()
    for name in ("max_duration_s", "drain_timeout_s"):
        if name in data:
            values[name] = setting(name, data[name], float)
    if "egress_network" in data:
        network = data["egress_network"] or {}
        try:
            if not isinstance(network, Mapping):
                raise ValueError("must be a mapping: {allow: [networks], deny: [networks]}")
            NetworkPolicy.from_config(network)
        except ValueError as exc:
            raise ConfigError(f"{source}: egress_network {exc}") from None
        values["egress_network"] = dict(network)
    values.update(_storage(data, source))
    values.update(_cpu_cost(data.get("cpu_cost") or {}, source, unused))
    values["unused"] = tuple(unused)
    return WorkerConfig(**values)


def _storage(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """LiveKit's default storage section (s3, azure, gcp or alioss) as egresskit's `storage`."""
    sections = [name for name in STORAGE_SECTIONS if data.get(name)]
    if data.get("storage"):
        sections.append("storage")
    if len(sections) > 1:
        raise ConfigError(f"{source}: one default storage, not {', '.join(sections)}")
    values: dict[str, Any] = {}
    if sections and sections[0] != "storage":
        values["storage"] = {sections[0]: dict(data[sections[0]])}
    elif sections:
        values["storage"] = dict(data["storage"])
    if data.get("backup_storage"):
        values["backup_storage"] = dict(data["backup_storage"])
    return values


_COST_KEYS = frozenset(f.name for f in dataclasses.fields(CpuCosts))


def _cpu_cost(section: Mapping[str, Any], source: str, unused: list[str]) -> dict[str, Any]:
    """`cpu_cost`: the keys egresskit prices by; LiveKit's others (memory, pulse) are unused."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: cpu_cost must be a mapping")
    unused += [f"cpu_cost.{k}" for k in sorted(set(section) - _COST_KEYS)]
    try:
        costs = CpuCosts.from_mapping({k: v for k, v in section.items() if k in _COST_KEYS})
    except ValueError as exc:
        raise ConfigError(f"{source}: invalid setting cpu_cost: {exc}") from None
    return {"cpu_costs": costs}


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, 6379
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"redis address {address!r} is not host:port") from None


def default_processes() -> int:
    """One worker process per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
