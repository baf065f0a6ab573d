"""The LiveKit server settings of `egresskit serve`: flags, environment, YAML `livekit:`."""

from __future__ import annotations

from pathlib import Path

import pytest

from egresskit.cli import build_parser
from egresskit.service.config import ConfigError, load_config

BASE = {"api_key": "k", "api_secret": "s"}


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "egresskit.yaml"
    path.write_text(text)
    return path


def test_unset_means_embedded_rooms():
    config = load_config(BASE, env={})
    assert (config.livekit_url, config.livekit_api_key, config.livekit_api_secret) == ("", "", "")


def test_flags_env_and_yaml(tmp_path):
    path = _yaml(
        tmp_path,
        "api_key: k\napi_secret: s\n"
        "livekit: {url: 'ws://yaml:7880', api_key: yk, api_secret: ysecret}\n",
    )
    from_yaml = load_config({"config": str(path)}, env={})
    assert (from_yaml.livekit_url, from_yaml.livekit_api_key) == ("ws://yaml:7880", "yk")
    assert from_yaml.livekit_api_secret == "ysecret"

    env = {"EGRESSKIT_LIVEKIT_URL": "wss://env.example", "EGRESSKIT_LIVEKIT_API_KEY": "ek"}
    from_env = load_config({"config": str(path)}, env=env)
    assert (from_env.livekit_url, from_env.livekit_api_key) == ("wss://env.example", "ek")
    assert from_env.livekit_api_secret == "ysecret"

    flags = build_parser().parse_args(
        [
            "serve",
            "--config",
            str(path),
            "--livekit-url",
            "ws://flag:7880",
            "--livekit-api-key",
            "fk",
            "--livekit-api-secret",
            "fsecret",
        ]
    )
    from_flags = load_config(flags, env=env)
    assert (from_flags.livekit_url, from_flags.livekit_api_key) == ("ws://flag:7880", "fk")
    assert from_flags.livekit_api_secret == "fsecret"
    assert "fsecret" not in repr(from_flags)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"livekit_url": "ws://h:7880"}, "needs all of"),
        ({"livekit_url": "ws://h:7880", "livekit_api_key": "k"}, "needs all of"),
        (
            {"livekit_url": "ftp://h", "livekit_api_key": "k", "livekit_api_secret": "s"},
            "livekit_url",
        ),
    ],
)
def test_incomplete_or_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**BASE, **settings}, env={})


def test_yaml_livekit_section_is_checked(tmp_path):
    path = _yaml(tmp_path, "api_key: k\napi_secret: s\nlivekit: {url: 'ws://h', token: x}\n")
    with pytest.raises(ConfigError, match="unknown livekit setting"):
        load_config({"config": str(path)}, env={})
