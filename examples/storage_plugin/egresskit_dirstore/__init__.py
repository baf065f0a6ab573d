"""An example egresskit storage backend: files into a directory, recorded in manifest.json.

It shows the whole plugin contract: subclass ``Storage``, set ``name``, build from a config
mapping in ``from_config``, return a location from ``upload_file``, keep blocking file work
off the event loop, and list credentials in ``config()`` so they are redacted (this one
has none).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from egresskit.storage.base import Storage, config_to_dict
from egresskit.storage.paths import confine


class DirStore(Storage):
    name = "dirstore"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Self:
        return cls(config_to_dict(cfg)["root"])

    def config(self) -> dict[str, Any]:
        return {"root": str(self.root)}

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        dest = confine(self.root, key)
        async with self._lock:  # one manifest writer at a time
            await asyncio.to_thread(self._store, Path(path), dest, key, content_type)
        return dest.as_uri()

    def _store(self, src: Path, dest: Path, key: str, content_type: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        entries = self.manifest()
        entries[key] = {"content_type": content_type, "size": dest.stat().st_size}
        self.manifest_path.write_text(json.dumps(entries, indent=2, sort_keys=True))

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())
