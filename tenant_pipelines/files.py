"""Writing files so that a crash never leaves half of one: the project's one atomic JSON writer."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a folder: the names in it, after a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: object, mode: int = 0o600) -> None:
    """Write ``data`` as JSON (indent 2, a final newline) to ``path`` atomically: into a hidden
    temporary file next to it (``.<name>.<random>.tmp``), fsynced, renamed over ``path``, then
    the folder fsynced. A reader sees the old file or the new one, never a part; a crash leaves
    at most the temporary file. ``mode`` is the new file's permission bits before the umask, as
    for ``os.open``: 0o600 (the default) keeps it private, 0o666 is what ``open()`` gives. The
    folder must exist."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_path(path.parent)
