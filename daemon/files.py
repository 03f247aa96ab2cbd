"""Files written atomically: a reader sees the old file or the new one, never a mix, even across a power cut.

``write_atomically`` writes a temporary file ``.NAME.XXXX.tmp`` in the same folder, fsyncs
it, renames it over ``NAME`` and fsyncs the folder. A power cut mid-write can leave the
temporary file behind; ``remove_stale_temporaries`` deletes such leftovers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (a str is written as UTF-8), file mode ``mode``; the folder must exist."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files ``write_atomically`` left in ``folder`` when the power was cut
    mid-write (``.NAME.XXXX.tmp``); return their names. Call it before anything writes there."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed
