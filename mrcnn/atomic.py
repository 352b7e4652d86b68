"""Atomic, durable file writes for files users keep (configs, checkpoints, converted weights,
results), and the clean-up of what a killed writer left behind.

A file is written under a temporary name in its own directory, flushed to the disk (fsync of the
file), renamed over the final name (os.replace, atomic within one file system) and the rename
itself made durable (fsync of the directory). A reader therefore sees the old file or the whole
new one, also after a crash or a power cut.

Temporary names are `.<name>.<host>-<pid>.<random><suffix>`: the writer's host and process id
let `remove_stale_temporaries` tell the leftovers of a killed process (SIGKILL, a lost machine)
from files that a live writer is still producing.
"""
import contextlib
import errno
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

# The host part of temporary names: a short hash of the host name (which may hold dots).
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
TEMPORARY_NAME = re.compile(r"\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[A-Za-z0-9_]{8}(\..*)?")


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yields a temporary path beside `path`; on success it replaces `path`, durably.

    The temporary name ends with `suffix`: writers that choose the format from the name (e.g.
    cv2.VideoWriter) need the final name's extension there.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` is
    left as it was, so a reader never sees a partial file. The temporary file lives in the same
    directory (created if needed) because os.replace is only atomic within one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST_TAG}-{os.getpid()}.",
                               suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give the usual mode
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Opens a temporary file beside `path` for writing; on success it replaces `path`."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def fsync_file(path):
    """Flushes a closed file's data to the disk."""
    fd = os.open(path, os.O_RDWR)  # Windows syncs only handles open for writing
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory):
    """Makes the entries of `directory` (a rename into it) durable. POSIX only: Windows cannot
    open a directory, and its renames go through the file system's journal."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        # Some file systems (certain FUSE and network mounts) cannot sync a directory.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(directory):
    """Deletes the temporary files of atomic writes in `directory` whose writer is dead: a
    process of this host that no longer runs. Returns the removed paths.

    Temporaries of other hosts (a shared file system) and of live processes are left alone.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = TEMPORARY_NAME.fullmatch(path.name)
        if (match and match["host"] == HOST_TAG and not _process_runs(int(match["pid"]))
                and path.is_file()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _process_runs(pid):
    if os.name != "posix":  # Windows' os.kill would terminate the process: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
