"""Service configuration: precedence, defaults, dev mode and readable errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from egresskit.service.config import ConfigError, ServiceConfig, load_config

KEYS = {"EGRESSKIT_API_KEY": "envkey", "EGRESSKIT_API_SECRET": "env-secret-value"}


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "egresskit.yaml"
    path.write_text(text)
    return path


def test_defaults():
    config = load_config({}, KEYS)
    assert (config.port, config.bind) == (7880, "127.0.0.1")
    assert config.output_dir == Path("recordings")
    assert config.webhook_urls == () and config.max_duration_s == 0 and config.max_concurrent == 0
    assert config.storage == {} and config.log_level == "info" and not config.dev
    assert config.keys == {"envkey": "env-secret-value"}


def test_flags_beat_env_beat_yaml_beat_defaults(tmp_path):
    path = _yaml(
        tmp_path,
        """
port: 1111
bind: 0.0.0.0
api_key: yamlkey
api_secret: yaml-secret
output_dir: /srv/yaml
max_duration_s: 3600
webhook_urls: [http://yaml/hook]
storage:
  s3: {bucket: rec, access_key: AK, secret: yaml-s3-secret}
log_level: WARNING
""",
    )
    env = {"EGRESSKIT_PORT": "2222", "EGRESSKIT_OUTPUT_DIR": "/srv/env", **KEYS}
    flags = argparse.Namespace(port=3333, bind=None, api_key=None, config=str(path), dev=None)
    config = load_config(flags, env)
    assert config.port == 3333  # flag
    assert config.output_dir == Path("/srv/env")  # env over YAML
    assert config.api_key == "envkey"  # env over YAML
    assert config.bind == "0.0.0.0"  # YAML over default (flag None falls through)
    assert config.max_duration_s == 3600.0
    assert config.webhook_urls == ("http://yaml/hook",)
    assert config.storage["s3"]["bucket"] == "rec"
    assert config.log_level == "warning"
    assert config.max_concurrent == 0  # default


def test_env_lists_and_booleans():
    env = {
        "EGRESSKIT_WEBHOOK_URLS": "http://a/hook, https://b/hook",
        "EGRESSKIT_DEV": "true",
        "EGRESSKIT_MAX_CONCURRENT": "4",
    }
    config = load_config(None, env)
    assert config.webhook_urls == ("http://a/hook", "https://b/hook")
    assert config.dev and config.max_concurrent == 4


def test_dev_mode_supplies_the_dev_key_only_when_none_is_given():
    assert load_config({"dev": True}).keys == {"devkey": "secret"}
    assert load_config({"dev": True}, KEYS).api_key == "envkey"


def test_yaml_extra_keys(tmp_path):
    path = _yaml(tmp_path, "api_key: k\napi_secret: s\nkeys:\n  other: other-secret\n")
    assert load_config({}, {}, path).keys == {"k": "s", "other": "other-secret"}


def test_repr_never_shows_secrets(tmp_path):
    path = _yaml(
        tmp_path,
        "api_key: k\napi_secret: top-secret-value\n"
        "storage: {s3: {secret: storage-secret}}\nkeys: {other: extra-secret}\n",
    )
    config = load_config({}, {}, path)
    for text in (repr(config), str(config), f"{config}"):
        assert "top-secret-value" not in text
        assert "storage-secret" not in text and "extra-secret" not in text
        assert "api_key='k'" in text and "s3" in text


@pytest.mark.parametrize(
    ("yaml_text", "env", "says"),
    [
        ("port: [1\n", {}, "not valid YAML at line"),
        ("- a\n- b\n", {}, "must be a mapping"),
        ("prot: 1\n", {}, "unknown setting(s) prot"),
        ("port: 99999\n", {}, "invalid setting port"),
        ("port: eighty\n", {}, "invalid setting port"),
        ("webhook_urls: [ftp://x]\n", {}, "invalid setting webhook_urls"),
        ("max_duration_s: -5\n", {}, "invalid setting max_duration_s"),
        ("log_level: loud\n", {}, "invalid setting log_level"),
        ("storage: s3\n", {}, "invalid setting storage"),
        ("", {"EGRESSKIT_DEV": "perhaps"}, "EGRESSKIT_DEV"),
    ],
)
def test_bad_settings_are_named(tmp_path, yaml_text, env, says):
    path = _yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config({}, {**KEYS, **env}, path)
    assert says in str(caught.value)


def test_missing_key_or_secret_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="API key and secret are required"):
        load_config({}, {"EGRESSKIT_API_KEY": "only-key"})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({}, KEYS, tmp_path / "missing.yaml")


def test_config_is_immutable():
    config = load_config({}, KEYS)
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    assert isinstance(config, ServiceConfig)
