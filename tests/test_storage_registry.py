"""Choosing backends: request precedence, entry points, missing plugins, a third-party plugin."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from livekit.protocol import egress

from egresskit.storage import Registry, StorageNotInstalled, get_backend, storage_for_output
from egresskit.storage.local import LocalStorage
from egresskit.storage.s3 import S3Storage

REPO = Path(__file__).resolve().parents[1]


def s3(bucket: str) -> egress.S3Upload:
    return egress.S3Upload(bucket=bucket, access_key="k", secret="s")


def test_builtins_come_from_entry_points():
    assert get_backend("s3") is S3Storage
    assert get_backend("local") is LocalStorage
    assert {"local", "s3"} <= set(Registry().names())


def test_per_output_storage_wins_over_request_and_default():
    output = egress.EncodedFileOutput(filepath="a.mp4", s3=s3("per-output"))
    request = egress.StorageConfig(s3=s3("request"))
    chosen = storage_for_output(output, request, {"s3": {"bucket": "default"}})
    assert isinstance(chosen, S3Storage) and chosen.bucket == "per-output"


def test_start_egress_output_storage_then_request_storage():
    per_output = egress.Output(file=egress.FileOutput(), storage=egress.StorageConfig(s3=s3("o")))
    assert storage_for_output(per_output, egress.StorageConfig(s3=s3("r"))).bucket == "o"
    plain = egress.Output(file=egress.FileOutput())
    assert storage_for_output(plain, egress.StorageConfig(s3=s3("r"))).bucket == "r"


def test_server_default_then_local_output_dir(tmp_path):
    output = egress.SegmentedFileOutput(filename_prefix="live")
    chosen = storage_for_output(output, None, {"local": {"root": str(tmp_path)}})
    assert isinstance(chosen, LocalStorage) and chosen.root == tmp_path
    assert storage_for_output(output) is None


@pytest.mark.parametrize(
    ("field", "message", "package"),
    [
        ("gcp", egress.GCPUpload(bucket="b"), "egresskit-gcs"),
        ("azure", egress.AzureBlobUpload(container_name="c"), "egresskit-azure"),
        ("aliOSS", egress.AliOSSUpload(bucket="b"), "egresskit-alioss"),
    ],
)
def test_backend_without_its_plugin_names_the_package(field, message, package):
    # A registry over an entry-point group nothing is installed in: only built-ins exist,
    # exactly what a server without the plugin distributions sees.
    bare = Registry(group="egresskit.storage.nothing-installed-here")
    output = egress.EncodedFileOutput(filepath="a.mp4", **{field: message})
    with pytest.raises(StorageNotInstalled) as info:
        bare.storage_for_output(output)
    assert f"pip install {package}" in str(info.value)
    assert info.value.package == package


def test_unknown_name_in_server_config_is_not_installed():
    with pytest.raises(StorageNotInstalled, match="'nosuchstore' is not installed"):
        Registry().from_spec({"nosuchstore": {}})


async def test_local_storage_copies_inside_its_root_only(tmp_path):
    src = tmp_path / "src.mp4"
    src.write_bytes(b"recording")
    store = LocalStorage(tmp_path / "root")
    for key in ("../escape.mp4", "/etc/passwd", "a/../../b.mp4", ""):
        with pytest.raises(ValueError):
            await store.upload_file(src, key, "video/mp4")
    location = await store.upload_file(src, "rooms/a.mp4", "video/mp4")
    assert location == str((tmp_path / "root/rooms/a.mp4").resolve())
    assert (tmp_path / "root/rooms/a.mp4").read_bytes() == b"recording"
    assert src.exists()
    assert not (tmp_path / "escape.mp4").exists()


@pytest.fixture(scope="module")
def dirstore_plugin(tmp_path_factory):
    """The example plugin, pip-installed into a private target dir put on sys.path.

    pip builds it in an isolated env (fetching setuptools from the package index), so the
    test works whatever setuptools the machine has, and nothing global is modified.
    """
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(REPO / "examples" / "storage_plugin"),
        ],
        check=True,
        timeout=300,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("egresskit_dirstore", None)


async def test_example_plugin_is_discovered_by_name_and_used(dirstore_plugin, tmp_path):
    registry = Registry()
    assert "dirstore" in registry.names()
    backend = registry.get("dirstore")
    assert backend.__module__ == "egresskit_dirstore"
    assert str(dirstore_plugin) in sys.modules["egresskit_dirstore"].__file__

    src = tmp_path / "clip.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))
    store = registry.storage_for_output(
        egress.EncodedFileOutput(filepath="clip.mp4"), None, {"dirstore": {"root": tmp_path / "d"}}
    )
    async with store:
        location = await store.upload_file(src, "rooms/clip.mp4", "video/mp4")
    assert location == (tmp_path / "d/rooms/clip.mp4").resolve().as_uri()
    assert (tmp_path / "d/rooms/clip.mp4").read_bytes() == src.read_bytes()
    assert store.manifest() == {"rooms/clip.mp4": {"content_type": "video/mp4", "size": 1012}}
