"""Writing files so that a crash never leaves a half-written one: :func:`atomic_write`.

Every file pytorch-pruner writes (checkpoints, sparse safetensors, ``config.json``) goes through
:func:`atomic_write`: the content is written to a temporary file in the same folder, flushed to
disk (``fsync``), and renamed over the target with :func:`os.replace`, which is atomic on one file
system. A reader therefore sees the old file or the new one, whole, never a mix or a truncated
file; an error while writing leaves the old file as it was.

Temporary files are named ``<name>.<host>-<pid>.tmp``. An error removes its own; one left behind by
a process that was killed (SIGKILL, power loss) is recognised by that name and removed at the next
write of the same file: at once if its process on this host is gone, after a day if it came from
another host (a shared file system).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries", "temp_name"]

#: Leftover temporaries of other hosts older than this (seconds) are removed.
STALE_AFTER_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname() or "host")


def temp_name(path: str | os.PathLike[str]) -> Path:
    """The temporary file :func:`atomic_write` writes *path*'s content to, in the same folder.

    It holds the host name and the process id, so ranks of a distributed run that save the same
    path never write into one another's temporary (the last rename wins, whole).
    """
    path = Path(path)
    return path.with_name(f"{path.name}.{_HOST}-{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of *path* that killed writers left behind; return the ones removed.

    A temporary of this host is removed when its process no longer runs; one of another host (or of
    an older version, ``<name>.<pid>.tmp``) when it is older than a day. Temporaries of running
    writers are left alone.
    """
    path = Path(path)
    pattern = re.compile(rf"^{re.escape(path.name)}\.(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>\d+)\.tmp$")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for candidate in siblings:
        match = pattern.match(candidate.name)
        if match is None:
            continue
        host, pid = match["host"], int(match["pid"])
        try:
            stale = not _alive(pid) if host == _HOST else now - candidate.stat().st_mtime > STALE_AFTER_S
            if stale:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write a file atomically: ``write(tmp)`` writes the content to the path it is given.

    The temporary (:func:`temp_name`) is in *path*'s folder, is flushed to disk, then renamed over
    *path*. If ``write`` raises (or anything else fails), the temporary is removed, *path* keeps its
    old content, and the error propagates. Leftovers of killed earlier writes of *path* are removed
    first (:func:`remove_stale_temporaries`).

    Args:
        path: the file to write; its folder must exist.
        write: called once with the temporary path; must write the whole content there.

    Returns:
        *path*.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> atomic_write(target, lambda tmp: tmp.write_text("hello")).read_text()
        'hello'
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of *data*."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of *text*."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))
