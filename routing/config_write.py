"""Writing an applied config back to the file the gateway serves from, all at once or not at all.

A config applied through the admin API is also the file's new content: otherwise the file watcher would
put the old one back at its next look, and a restart would forget the change. The write is a temporary file
in the same folder, flushed to disk, renamed over the config (readers see the old file or the new one,
never half of either). A file the gateway must not change says so before anything is validated: none at all
(started without --config), a read-only mount (a Kubernetes ConfigMap, a `:ro` volume), a file with no write
permission for anyone (read-only by intent, even for root), or a folder where no file can be created.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path


class NotWritable(Exception):
    """Why the config file cannot take an applied config; the old config keeps serving."""


def target(path: str | None) -> Path:
    """The file a write replaces: the config itself, or what its symlink points at. NotWritable if none."""
    if not path:
        raise NotWritable("the gateway was started without --config: there is no config file to apply a "
                          "config to (start it with --config FILE, or edit the config where it comes from)")
    real = Path(os.path.realpath(path))
    try:
        mode = real.stat().st_mode
    except OSError as exc:
        raise NotWritable(f"the config file {path} cannot be read ({exc.strerror})") from None
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(real, os.W_OK):
        raise NotWritable(f"the config file {path} is read-only (a ConfigMap or a read-only mount?): edit it "
                          "where it comes from; the watcher applies the change")
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise NotWritable(f"the folder of {path} is read-only: the config is written as a new file renamed over "
                          "the old one, so its folder must be writable")
    return real


def write_atomically(path: str, text: str) -> Path:
    """Replace the config file's content with `text` in one rename, keeping its permissions."""
    real = target(path)
    mode = stat.S_IMODE(real.stat().st_mode)
    fd, temp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, real)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if exc.errno in (errno.EBUSY, errno.EXDEV):  # a file bind-mounted on its own cannot be renamed over
            raise NotWritable(f"the config file {path} cannot be replaced in one rename ({exc.strerror}: a file "
                              "mounted on its own?): mount its folder instead") from None
        raise NotWritable(f"the config file {path} could not be written ({exc.strerror})") from None
    _sync_folder(real.parent)
    return real


def _sync_folder(folder: Path) -> None:
    """The rename itself, on disk (a crash right after must not bring the old file back)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
