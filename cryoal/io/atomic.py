"""Atomic file writes: write a temporary file beside the target, then rename it into place.

A crash or Ctrl-C at any point leaves either the old file or the new one, never a mix. A killed
process (SIGKILL, power loss) cannot remove its temporary file `.<name>.tmp-<pid>`; the next write
of the same target removes it (`remove_stale_temps`) and says so on stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cryoal.errors import CryoalError

_FICLONE = 0x40049409  # Linux ioctl: share extents (copy-on-write clone) on btrfs/xfs


def check_output_dir(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """Return `path` as a Path, or raise if its parent directory does not exist.

    `path` is a file to write unless `directory` is set: an existing directory there is an error
    named by the user's path (the final rename would otherwise fail naming a temporary file).
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CryoalError(f"{p}: directory {parent} does not exist")
    if not directory and p.is_dir():
        raise CryoalError(f"{p}: is a directory; give the name of a file to write")
    return p


def temp_path_for(dest: Path) -> Path:
    """A temporary name in the same directory as `dest`, so the final rename is atomic."""
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(
    dest: str | os.PathLike, *, locked: bool = False, tags: tuple[str, ...] = ("tmp",)
) -> list[Path]:
    """Remove the temporary files (or directories) that killed writes of `dest` left beside it.

    A name `.<dest name>.<tag>-<pid>` (tag `tmp`; the gallery also moves the previous gallery
    aside as `old`) is stale when its writer cannot finish it: always when the caller holds
    `dest`'s lock (`locked`; every writer holds it while its temporary file exists), otherwise
    only when no process `<pid>` is running on this machine. The caller's own names are never
    touched. Each removal is reported in one line on stderr; returns the paths removed.
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    prefixes = tuple(f".{dest.name}.{tag}-" for tag in tags)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed  # no directory to clean: the write itself reports what is wrong
    for entry in entries:
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        pid_text = entry.name[len(prefix):] if prefix else ""
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or (not locked and _process_alive(pid)):
            continue
        path = parent / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another cleaner was first
        removed.append(path)
        print(f"warning: removed {path}, a temporary copy of {dest.name} left by an interrupted write "
              f"(process {pid})", file=sys.stderr)
    return removed


def replace_into_place(tmp: Path, dest: Path, *, sync_file: bool = True) -> None:
    """The last step of every atomic write: flush `tmp` to disk (unless the caller already has),
    rename it over `dest`, and flush the directory so that the rename itself survives a crash."""
    if sync_file:
        _fsync_path(tmp)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def discard(tmp: Path) -> None:
    """Delete a temporary file that will not be renamed (gone already is fine)."""
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


@contextlib.contextmanager
def temp_beside(dest: Path, *, sync_file: bool = True) -> Iterator[Path]:
    """The protocol without the checks: yield a temporary path beside `dest`; when the block
    succeeds it replaces `dest` (`replace_into_place`), on any exception it is deleted."""
    tmp = temp_path_for(dest)
    try:
        yield tmp
        replace_into_place(tmp, dest, sync_file=sync_file)
    except BaseException:
        discard(tmp)
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `dest`, on any exception it is deleted."""
    dest = check_output_dir(dest)
    remove_stale_temps(dest)
    with temp_beside(dest) as tmp:
        yield tmp


def stage_text(dest: Path, text: str) -> Path:
    """Write `text` (UTF-8) to a temporary file beside `dest`, flushed to disk; returns its path.
    For writes of several files that must land together: stage them all, then `replace_all`."""
    tmp = temp_path_for(dest)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        discard(tmp)
        raise
    return tmp


def replace_all(staged: list[tuple[Path, Path]]) -> None:
    """Rename each staged (temporary, target) pair into place, in order, then flush every
    directory once."""
    for tmp, dest in staged:
        os.replace(tmp, dest)
    for parent in dict.fromkeys(dest.parent for _, dest in staged):
        _fsync_dir(parent)


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces `dest` only if the block succeeds.

    Text mode defaults to UTF-8 and `newline=""` (what the csv module wants).
    """
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def copy_for_update(src: Path, dst: Path) -> None:
    """Copy `src` to `dst`, as a copy-on-write clone where the filesystem allows it."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass  # not a reflink-capable filesystem: fall back to a plain copy
    shutil.copyfile(src, dst)


def _fsync_path(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_LOCK_TRIES = 50  # each retry means another writer removed the lock file in between: rare


@contextlib.contextmanager
def exclusive_lock(target: Path, what: str = "pool") -> Iterator[None]:
    """Hold an advisory lock file `<target>.lock` so that two writers never race on one file.

    The lock is `flock` on that file, released by the kernel when the holder ends, even by
    SIGKILL; the file's existence alone never blocks anyone. The holder removes the file when it
    is done (before releasing the lock), so no `.lock` is left after a write, nor after a failed
    one that created nothing. Removing a lock file is only safe with the check below: a writer B
    may open the file just before the holder A removes it and lock it just after A releases it;
    B then holds a lock on a file no longer at that name, while a writer C creates a new one and
    locks that. So after locking, a writer checks that the name still leads to the file it
    locked, and otherwise starts again. A `.lock` that stays means a writer is running or was
    killed (SIGKILL, power loss): harmless, the next write takes it over and removes it.
    """
    lock = target.with_name(target.name + ".lock")
    check_output_dir(lock)
    for _ in range(_LOCK_TRIES):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CryoalError(
                f"{target}: this {what} is being written by another process (lock {lock}); "
                "wait for it to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock):
            break
        os.close(fd)  # locked a file that a finishing writer had just removed: take the new one
    else:
        raise CryoalError(f"{target}: could not take the lock {lock}: other writers keep replacing it")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: see above
        os.close(fd)  # closing releases the lock


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)
