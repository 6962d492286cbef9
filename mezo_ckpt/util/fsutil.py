"""Files and folders, safely: atomic writes, staged folders, locks, bounded reads.

Every writer in mezo-ckpt goes through here, so that:

* a file or folder appears whole or not at all (temp sibling, fsync, rename, fsync);
* nothing that exists is replaced unless the caller says so, and an output is never one
  of the command's own inputs;
* temp siblings left by killed processes are removed by the next writer;
* operating-system failures (read-only folder, full disk, a file where a folder is
  needed) surface as :class:`~mezo_ckpt.errors.OutputError` with a sentence that says
  what happened, never as a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from mezo_ckpt.errors import OutputError, OutputExistsError, RunLockedError

#: Marker in the names of temp siblings: ``.<name>.tmp-<pid>-<random>``.
TMP_MARK = ".tmp-"


def explain_os_error(e: OSError, path: str | os.PathLike, what: str) -> str:
    """One sentence for an OSError raised while doing ``what`` to ``path``."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EISDIR: "it is a folder, not a file",
        errno.ENOTDIR: "a component of the path is a file, not a folder",
        errno.ENOENT: "a folder on the path does not exist",
        errno.EEXIST: "it already exists",
        errno.ENOTEMPTY: "the folder is not empty",
        errno.ENAMETOOLONG: "the name is too long",
    }
    why = reasons.get(e.errno or -1, e.strerror or str(e))
    return f"cannot {what} {path}: {why}"


@contextlib.contextmanager
def os_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn OSErrors raised inside the block into :class:`OutputError`."""
    try:
        yield
    except (OutputError, OutputExistsError):
        raise
    except OSError as e:
        raise OutputError(explain_os_error(e, path, what)) from e


def fsync_dir(d: Path) -> None:
    """Persist a folder's entries (renames into it) where the platform allows."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name next to ``path`` for staging it."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove temp siblings of ``path`` whose writer process is gone; returns them."""
    removed: list[Path] = []
    prefix = f".{path.name}{TMP_MARK}"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        pid_text = p.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder (existing or not)."""
    pa, pb = Path(a), Path(b)
    with contextlib.suppress(OSError):
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def check_output(
    out: str | os.PathLike,
    *,
    kind: str,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    flag: str = "-o",
) -> Path:
    """Refuse an output before any work is done.

    Args:
        out: the file or folder that will be written.
        kind: "file" or "folder".
        overwrite: whether an existing output may be replaced.
        inputs: files and folders the command reads; the output may not be any of them,
            inside any of them (folders), or contain them.
        flag: how the user named the output (for messages).

    Raises:
        OutputError: the output is an input, its parent cannot hold it, or it has the
            wrong kind (a file where a folder is needed or the reverse).
        OutputExistsError: it exists (a non-empty folder, or a file) and ``overwrite``
            is false.
    """
    p = Path(out)
    for src in inputs:
        s = Path(src)
        if same_path(p, s) or (s.is_dir() and is_inside(p, s)) or is_inside(s, p):
            raise OutputError(
                f"{flag} {p} would overwrite this command's own input {s}: choose another path"
            )
    parent = p.parent if str(p.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {p}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {p}: {existing} is not writable")
    if p.exists() or p.is_symlink():
        if kind == "folder":
            if not p.is_dir():
                raise OutputError(f"{flag} {p} is a file; a folder is needed here")
            if any(p.iterdir()) and not overwrite:
                raise OutputExistsError(
                    f"{flag} {p} exists and is not empty: choose a new folder"
                    + (" (or pass --overwrite)" if flag else "")
                )
        else:
            if p.is_dir():
                raise OutputError(f"{flag} {p} is a folder; a file is needed here")
            if not overwrite:
                raise OutputExistsError(
                    f"{flag} {p} exists: choose another name (or pass --overwrite)"
                )
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file whole or not at all: temp sibling, fsync, rename, fsync the folder."""
    p = Path(path)
    tmp = temp_sibling(p)
    with os_errors(p, "write"):
        clean_stale_temps(p)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
        fsync_dir(p.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode(f: Path) -> None:
    """Give a file we wrote the mode a plain ``open()`` would (0666 minus the umask):
    libraries that write through private temp files (safetensors, tempfile) leave 0600,
    which a teammate or a serving user then cannot read."""
    with contextlib.suppress(OSError):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, 0o666 & ~_umask())


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp sibling to write; on success it is fsynced and renamed onto ``path``."""
    p = Path(path)
    tmp = temp_sibling(p)
    with os_errors(p, "write"):
        p.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(p)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            default_file_mode(tmp)
            os.replace(tmp, p)
            fsync_dir(p.parent)
        finally:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp sibling folder to fill; on success it is renamed onto ``out``.

    ``out`` may be missing or an empty folder; with ``replace`` an existing folder is
    moved aside and deleted after the rename (for caches rebuilt under a lock).
    """
    p = Path(out)
    tmp = temp_sibling(p)
    with os_errors(p, "write"):
        p.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(p)
        tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700)
        try:
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                    default_file_mode(f)
            aside = None
            if p.exists() or p.is_symlink():
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
                elif replace:
                    aside = temp_sibling(p)
                    p.rename(aside)
                else:
                    raise OutputExistsError(f"{p} appeared while it was being written")
            os.replace(tmp, p)
            fsync_dir(p.parent)
            if aside is not None:
                if aside.is_dir() and not aside.is_symlink():
                    shutil.rmtree(aside, ignore_errors=True)
                else:  # a file or a link where the folder goes
                    aside.unlink(missing_ok=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def lock_path(target: str | os.PathLike) -> Path:
    """Where the lock of ``target`` lives: ``<cache>/locks/<sha256 of its absolute path>``,
    outside the user's folders (lock files are never removed: removing one would let a
    process holding the old file and one creating a new file both hold "the" lock)."""
    import hashlib

    from mezo_ckpt.util.runtime import cache_root

    key = hashlib.sha256(str(Path(target).resolve()).encode("utf-8")).hexdigest()[:32]
    return cache_root() / "locks" / f"{key}.lock"


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (see :func:`lock_path`) or raise RunLockedError
    at once."""
    from filelock import FileLock, Timeout

    p = Path(target)
    where = lock_path(p)
    try:
        with os_errors(where.parent, "create the lock folder"):
            where.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(where))
        try:
            lock.acquire(timeout=0)
        except Timeout:  # (a TimeoutError, hence an OSError: caught before os_errors)
            raise RunLockedError(
                f"another process is {what} {p} (it holds the run's lock): wait for it to "
                "finish, or choose another output"
            ) from None
    except OSError as e:
        if isinstance(e, (RunLockedError, OutputError)):
            raise
        raise OutputError(explain_os_error(e, where, "lock")) from e
    try:
        yield
    finally:
        lock.release()


def read_regular_file(path: str | os.PathLike, cap: int, what: str, error: type[Exception]):
    """Read a regular file of at most ``cap`` bytes; never blocks on a FIFO, never reads a
    device without end.

    Raises:
        FileNotFoundError: it does not exist (callers map it to their own error).
        ``error``: not a regular file, or larger than ``cap``.
    """
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except IsADirectoryError:
        raise error(f"{p} is a folder, not a {what}") from None
    except PermissionError:
        raise error(f"{p}: permission denied") from None
    try:  # before fdopen: on Linux a folder opens, and fdopen of it raises a bare OSError
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{p} is a folder, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p} is not a regular file (a device, FIFO or socket), not a {what}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        if st.st_size > cap:
            raise error(f"{p} is {st.st_size} bytes; the limit for a {what} is {cap}")
        data = f.read(cap + 1)
    if len(data) > cap:
        raise error(f"{p} grew beyond {cap} bytes while it was read")
    return data
