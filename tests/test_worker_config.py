"""`egresskit worker` reads livekit/egress's YAML unchanged, and admits by CPU cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egresskit.service.config import ConfigError
from egresskit.worker.config import load_worker_config

ROOT = Path(__file__).resolve().parent.parent

# A livekit/egress configuration as its README documents it, egresskit's keys beside.
EGRESS_YAML = """
log_level: debug
api_key: APIkey
api_secret: very-secret-value
ws_url: wss://livekit.example.com
insecure: false
template_base: http://localhost:7980/
redis:
  address: 10.0.0.5:6380
  username: egress
  password: redis-secret
  db: 2
  use_tls: true
  pool_size: 20
health_port: 8080
prometheus_port: 9090
cluster_id: eu-1
s3:
  access_key: AK
  secret: s3-secret
  region: eu-west-1
  bucket: recordings
cpu_cost:
  max_cpu_utilization: 0.6
  room_composite_cpu_cost: 1.5
  track_cpu_cost: 0.05
  max_memory: 8
output_dir: /var/recordings
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "egress.yaml"
    path.write_text(text)
    return path


def test_a_livekit_egress_file_loads_unchanged(tmp_path):
    config = load_worker_config(str(write(tmp_path, EGRESS_YAML)), {})
    assert (config.api_key, config.api_secret, config.ws_url) == (
        "APIkey",
        "very-secret-value",
        "wss://livekit.example.com",
    )
    assert (config.redis.address, config.redis.username, config.redis.db) == (
        "10.0.0.5:6380",
        "egress",
        2,
    )
    assert config.redis.use_tls and config.redis.password == "redis-secret"
    assert (config.health_port, config.prometheus_port, config.cluster_id) == (8080, 9090, "eu-1")
    assert config.log_level == "debug"
    assert config.storage == {
        "s3": {
            "access_key": "AK",
            "secret": "s3-secret",
            "region": "eu-west-1",
            "bucket": "recordings",
        }
    }
    assert config.cpu_costs.max_cpu_utilization == 0.6
    assert config.cpu_costs.room_composite_cpu_cost == 1.5
    assert config.cpu_costs.track_cpu_cost == 0.05
    assert config.cpu_costs.participant_cpu_cost == 0.4  # egresskit's own, not LiveKit's 2
    assert config.output_dir == Path("/var/recordings")
    assert config.unused == ("insecure", "template_base", "redis.pool_size", "cpu_cost.max_memory")
    shown = repr(config)
    assert "very-secret-value" not in shown and "redis-secret" not in shown
    assert "s3-secret" not in shown
    client = config.redis.client()
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.5", 6380, 2)


def test_config_body_and_livekit_environment(tmp_path):
    body = "redis: {address: 127.0.0.1:6379}\n"
    env = {
        "EGRESS_CONFIG_BODY": body,
        "LIVEKIT_API_KEY": "k",
        "LIVEKIT_API_SECRET": "s",
        "LIVEKIT_WS_URL": "ws://127.0.0.1:7880",
    }
    config = load_worker_config(None, env)
    assert (config.api_key, config.ws_url, config.redis.address) == (
        "k",
        "ws://127.0.0.1:7880",
        "127.0.0.1:6379",
    )
    path = write(tmp_path, EGRESS_YAML)
    assert load_worker_config(None, {"EGRESS_CONFIG_FILE": str(path)}).cluster_id == "eu-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api_key: k\napi_secret: s\nws_url: ws://h\n", "redis: {address: host:port} is required"),
        ("redis: {address: h:1}\n", "api_key, api_secret, ws_url required"),
        (EGRESS_YAML + "azure: {account_name: a}\n", "one default storage, not s3, azure"),
        (
            EGRESS_YAML.replace("max_cpu_utilization: 0.6", "max_cpu_utilization: 3"),
            "max_cpu_utilization must be above 0 and at most 1",
        ),
        (
            EGRESS_YAML.replace("track_cpu_cost: 0.05", "track_cpu_cost: lots"),
            "track_cpu_cost must be a number",
        ),
        (
            EGRESS_YAML.replace("pool_size: 20", "pool_sise: 20"),
            "unknown redis setting(s) pool_sise",
        ),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_configuration_is_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_worker_config(str(write(tmp_path, text)), {})
    assert message in str(caught.value)


def test_the_command_refuses_a_bad_configuration_readably(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"api_key": "k", "api_secret": "s", "ws_url": "ws://h"}))
    done = subprocess.run(
        [sys.executable, "-m", "egresskit", "worker", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert done.returncode == 2
    assert "redis: {address: host:port} is required" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_manager_keeps_the_admission_it_is_given(tmp_path):
    """An Admission with nothing running is falsy (len 0); it must still be the one used."""
    from egresskit.egress.admission import Admission, CpuCosts
    from egresskit.egress.manager import EgressManager
    from egresskit.rooms.local import RoomManager

    admission = Admission(CpuCosts(room_composite_cpu_cost=1.5), cores=2)
    manager = EgressManager(RoomManager(), tmp_path, admission=admission)
    assert manager.admission is admission
