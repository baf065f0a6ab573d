"""A backend that places files under a root directory on this machine."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from google.protobuf.message import Message

from egresskit.storage.base import Storage, config_to_dict
from egresskit.storage.paths import confine, temporary_beside


class LocalStorage(Storage):
    """Copies (or moves, with ``move=True``) files into ``root``; location is the absolute path."""

    name = "local"

    def __init__(self, root: Path | str, move: bool = False) -> None:
        self.root = Path(root)
        self.move = move

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Message) -> Self:
        data = config_to_dict(cfg)
        return cls(root=data["root"], move=bool(data.get("move", False)))

    def config(self) -> dict[str, Any]:
        return {"root": str(self.root), "move": self.move}

    async def upload_file(self, path: Path, key: str, content_type: str) -> str:
        dest = confine(self.root, key)
        await asyncio.to_thread(self._place, Path(path), dest)
        return str(dest)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(confine(self.root, key).unlink, missing_ok=True)

    def _place(self, src: Path, dest: Path) -> None:
        if src.resolve() == dest:
            return
        # Write beside the destination, then rename, so readers never see half a file.
        partial = temporary_beside(dest)
        try:
            if self.move:
                shutil.move(src, partial)
            else:
                shutil.copyfile(src, partial)
            os.replace(partial, dest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
