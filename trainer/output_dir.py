"""The folder a run writes: one run at a time, and a final result that replaces the previous one as a whole.

The lock is an ``flock`` on ``<parent>/.<name>.lock`` (beside the folder, so it survives the folder swap below):
the OS releases it when its process dies, even by ``kill -9``, so a lock file left behind never blocks anyone.

The final adapter is written to ``<parent>/.<name>.staging`` and then published: the entries of the old folder
that the new result does not replace (checkpoints, ``tiny_base``, logs) are moved into the staging folder, and
the two folders are swapped in one ``renameat2(RENAME_EXCHANGE)``. A reader of the folder sees the old result or
the new one, never a mix; a run killed mid-publish is finished by :func:`recover` at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None

COMPLETE = ".staging-complete"  # marks a staging folder whose files are all written
_held: dict[str, list] = {}  # lock path -> [fd, depth]: the lock is re-entrant within one process


class OutputDirBusy(RuntimeError):
    """Another live process is writing the same output folder."""


def _sibling(output_dir: str | os.PathLike, suffix: str) -> str:
    path = os.path.realpath(output_dir)  # a symlinked output_dir: work beside (and swap) the folder it points to
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{suffix}")


def staging_dir(output_dir: str | os.PathLike) -> str:
    """Where the final result is written before :func:`publish` (the same on every rank)."""
    return _sibling(output_dir, ".staging")


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike):
    """Hold the output folder's lock for the block; raise :class:`OutputDirBusy` at once if a live process has it."""
    path = _sibling(output_dir, ".lock")
    if fcntl is None:
        yield
        return
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputDirBusy(
                f"{output_dir} is being written by another run (PID {holder}, lock {path}): wait "
                "for it to end, or use another --output_dir."
            ) from None
        try:  # the holder may have removed the file between our open and flock: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
    if previous:
        print(
            f"[perft-peft] {output_dir}: taking over the lock left by PID {previous}, which no longer runs", flush=True
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        del _held[path]
        os.unlink(path)  # while still locked, so nobody can lock the file we are removing
        os.close(fd)


def publish(staging: str, output_dir: str | os.PathLike) -> None:
    """Make the fully written ``staging`` folder the new ``output_dir``, keeping the old folder's other entries."""
    with open(os.path.join(staging, COMPLETE), "w"):
        pass  # from here on, an interrupted publish is finished by recover() rather than dropped
    _finish(staging, os.path.realpath(output_dir))


def recover(output_dir: str | os.PathLike) -> None:
    """Clean up after a run killed while writing its final result: drop a half-written staging folder (the old
    result is intact), or finish a publish that had started (the new result is complete)."""
    output_dir, staging = os.path.realpath(output_dir), staging_dir(output_dir)
    if os.path.isdir(staging):
        if os.path.exists(os.path.join(staging, COMPLETE)):
            print(
                f"[perft-peft] {output_dir}: finishing the publication of a final result interrupted by a kill",
                flush=True,
            )
            _finish(staging, output_dir)
        else:
            shutil.rmtree(staging)
    if os.path.isdir(_sibling(output_dir, ".old")):
        shutil.rmtree(_sibling(output_dir, ".old"))
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, COMPLETE))


def _finish(staging: str, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    for entry in os.listdir(output_dir):
        if not os.path.lexists(os.path.join(staging, entry)):
            os.rename(os.path.join(output_dir, entry), os.path.join(staging, entry))
    _exchange(staging, output_dir)
    shutil.rmtree(staging)  # now the old result
    os.remove(os.path.join(output_dir, COMPLETE))


def _exchange(a: str, b: str) -> None:
    """Swap two directories atomically (Linux renameat2); elsewhere, two renames and a moment without ``b``."""
    try:
        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), b)
    old = b.rstrip(os.sep)
    old = _sibling(old, ".old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)
