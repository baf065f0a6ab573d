"""Files under a root directory: the one confinement rule, and writes no symlink redirects.

Every local path egresskit writes goes through `confine` first: the paths a
request names (file paths, segment and image prefixes, playlist names, with
template values expanded), the names stages generate from them (segments,
images), manifests, and the keys LocalStorage stores. The rule: after every
symlink is followed, the path lies strictly inside the root, and each of its
names fits the filesystem that will hold it.

Files are replaced atomically through a temporary file of their directory that
is created exclusively (O_EXCL: a symlink planted under its name is never
followed) and has a short name of its own, so it never exceeds the length limit
the final name was checked against.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Used when the filesystem does not say (pathconf fails): Linux's limits.
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


class PathEscapesRoot(ValueError):
    """A requested path would resolve outside the root (or to the root itself)."""


class NameTooLong(ValueError):
    """A requested path has a name (or a total length) the filesystem cannot store."""


def confine(root: Path | str, path: str) -> Path:
    """`path` (relative to `root`, or absolute) resolved inside `root`, or an error.

    Symlinks are followed, so a link inside the root that points out of it
    is refused like `../`. The root itself is refused too: every caller
    writes a file or a prefix, never the root. Raises `PathEscapesRoot` or
    `NameTooLong`; the result is the resolved path.
    """
    if "\x00" in path:
        raise PathEscapesRoot("path contains a NUL character")
    real_root = Path(root).resolve()
    candidate = Path(path) if os.path.isabs(path) else real_root / path
    try:
        resolved = candidate.resolve()
    except RuntimeError:  # a symlink loop
        raise PathEscapesRoot(f"path {_shown(path)} runs into a symlink loop") from None
    if resolved == real_root or not resolved.is_relative_to(real_root):
        raise PathEscapesRoot(f"path {_shown(path)} is outside the output directory")
    _check_lengths(resolved, real_root, path)
    return resolved


def _check_lengths(resolved: Path, real_root: Path, requested: str) -> None:
    """Each new name, and the whole path, within the limits of the filesystem holding them."""
    existing = resolved
    while not os.path.exists(existing) and existing != real_root:
        existing = existing.parent
    name_max = _pathconf(existing, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    path_max = _pathconf(existing, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    reason = os.strerror(errno.ENAMETOOLONG)
    for name in resolved.relative_to(real_root).parts:
        size = len(os.fsencode(name))
        if size > name_max:
            raise NameTooLong(
                f"{reason}: {_shown(name)} in {_shown(requested)} is {size} bytes,"
                f" the output filesystem allows {name_max}"
            )
    size = len(os.fsencode(str(resolved)))
    if size >= path_max:
        raise NameTooLong(
            f"{reason}: {_shown(requested)} makes a path of {size} bytes,"
            f" the output filesystem allows {path_max - 1}"
        )


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _shown(text: str, limit: int = 60) -> str:
    """`text` quoted for an error message, shortened when long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def temporary_beside(path: Path) -> Path:
    """A new empty file in `path`'s directory, created exclusively, to be renamed onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".egresskit-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def write_atomically(
    path: Path, write: Callable[[BinaryIO], object], *, sync: bool = False
) -> None:
    """Replace `path` with what `write` puts in a file: readers see the old file or the new one.

    The rename replaces a symlink at `path` rather than writing through it.
    Blocking: run it off the event loop.
    """
    temporary = temporary_beside(path)
    try:
        with open(temporary, "wb") as out:
            write(out)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
