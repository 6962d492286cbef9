"""mezo_ckpt.util.fsutil: atomic writes, staged files and folders, output checks, locks, reads."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from mezo_ckpt.errors import OutputError, OutputExistsError, RunLockedError
from mezo_ckpt.util import fsutil
from mezo_ckpt.util.fsutil import (
    TMP_MARK,
    atomic_write_bytes,
    check_output,
    clean_stale_temps,
    exclusive_lock,
    explain_os_error,
    is_inside,
    lock_path,
    os_errors,
    read_regular_file,
    same_path,
    staged_file,
    staged_folder,
    temp_sibling,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(
    IS_ROOT or sys.platform == "win32", reason="root (or Windows) ignores folder permissions"
)
#: A pid no process can have (above any pid_max).
DEAD_PID = 2**31 - 2


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_MARK in p.name)


@pytest.fixture
def read_only(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    (d / "old.bin").write_bytes(b"old")
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "code, why",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "the disk quota is exhausted"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EISDIR, "it is a folder, not a file"),
        (errno.ENOTDIR, "a component of the path is a file, not a folder"),
        (errno.ENOENT, "a folder on the path does not exist"),
        (errno.EEXIST, "it already exists"),
        (errno.ENOTEMPTY, "the folder is not empty"),
        (errno.ENAMETOOLONG, "the name is too long"),
    ],
)
def test_explain_os_error(code, why):
    e = OSError(code, os.strerror(code))
    assert explain_os_error(e, "/x/out.zst", "write") == f"cannot write /x/out.zst: {why}"


def test_explain_unknown_errno_uses_strerror():
    e = OSError(errno.EIO, "Input/output error")
    assert explain_os_error(e, "f", "read") == "cannot read f: Input/output error"
    assert explain_os_error(OSError("odd"), "f", "read") == "cannot read f: odd"


def test_os_errors_converts_only_os_errors():
    with (
        pytest.raises(OutputError, match="cannot write out: the disk is full") as e,
        os_errors("out", "write"),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(e.value.__cause__, OSError)
    # an OSError subclass, passed through as is
    with pytest.raises(OutputExistsError), os_errors("out", "write"):
        raise OutputExistsError("exists")
    with pytest.raises(KeyError), os_errors("out", "write"):
        raise KeyError("not an OS error")


# ----------------------------------------------------------------------------- temp siblings


def test_temp_sibling_is_hidden_unique_and_next_to_the_file(tmp_path):
    p = tmp_path / "run.zst"
    a, b = temp_sibling(p), temp_sibling(p)
    assert a != b
    assert a.parent == p.parent
    assert a.name.startswith(f".run.zst{TMP_MARK}{os.getpid()}-")


def test_clean_stale_temps_removes_only_dead_writers(tmp_path):
    p = tmp_path / "run.zst"
    dead_file = tmp_path / f".run.zst{TMP_MARK}{DEAD_PID}-abcd1234"
    dead_dir = tmp_path / f".run.zst{TMP_MARK}{DEAD_PID}-ef567890"
    alive = tmp_path / f".run.zst{TMP_MARK}{os.getpid()}-00000000"
    odd = tmp_path / f".run.zst{TMP_MARK}notapid-1"
    other = tmp_path / f".other.zst{TMP_MARK}{DEAD_PID}-abcd1234"
    plain = tmp_path / "run.zst.tmp-1"
    dead_file.write_bytes(b"x")
    dead_dir.mkdir()
    (dead_dir / "inner.bin").write_bytes(b"x")
    for f in (alive, odd, other, plain):
        f.write_bytes(b"keep")
    removed = clean_stale_temps(p)
    assert sorted(removed) == sorted([dead_file, dead_dir])
    assert not dead_file.exists() and not dead_dir.exists()
    for f in (alive, odd, other, plain):
        assert f.exists()


def test_clean_stale_temps_of_a_missing_folder(tmp_path):
    assert clean_stale_temps(tmp_path / "missing" / "run.zst") == []


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_creates_and_replaces(tmp_path):
    p = tmp_path / "out.bin"
    atomic_write_bytes(p, b"first")
    assert p.read_bytes() == b"first"
    atomic_write_bytes(str(p), b"")
    assert p.read_bytes() == b""
    atomic_write_bytes(p, "ünïcødé".encode())
    assert p.read_text(encoding="utf-8") == "ünïcødé"
    assert temps(tmp_path) == []


def test_atomic_write_unicode_file_name(tmp_path):
    p = tmp_path / "résumé ✓.json"
    atomic_write_bytes(p, b"{}")
    assert p.read_bytes() == b"{}"


def test_atomic_write_removes_a_dead_writers_temp(tmp_path):
    p = tmp_path / "out.bin"
    stale = tmp_path / f".out.bin{TMP_MARK}{DEAD_PID}-deadbeef"
    stale.write_bytes(b"half a file")
    atomic_write_bytes(p, b"data")
    assert not stale.exists()
    assert temps(tmp_path) == []


@pytest.mark.parametrize(
    "where, code, why",
    [
        ("fsync", errno.ENOSPC, "the disk is full"),
        ("replace", errno.EROFS, "the file system is read-only"),
        ("replace", errno.EACCES, "permission denied"),
    ],
)
def test_atomic_write_failure_keeps_the_old_file_and_no_temp(
    tmp_path, monkeypatch, where, code, why
):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old content")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fsutil.os, where, fail)
    with pytest.raises(OutputError) as e:
        atomic_write_bytes(p, b"new content that must not appear")
    monkeypatch.undo()
    assert str(e.value) == f"cannot write {p}: {why}"
    assert p.read_bytes() == b"old content"
    assert temps(tmp_path) == []


def test_atomic_write_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    p = tmp_path / "new.bin"
    real_open = open

    class Half:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "open", lambda *a, **k: Half(real_open(*a, **k)), raising=False)
    with pytest.raises(OutputError, match="the disk is full"):
        atomic_write_bytes(p, b"0123456789")
    monkeypatch.undo()
    assert not p.exists()
    assert temps(tmp_path) == []


def test_atomic_write_into_a_missing_folder(tmp_path):
    p = tmp_path / "missing" / "out.bin"
    with pytest.raises(OutputError, match="a folder on the path does not exist"):
        atomic_write_bytes(p, b"x")
    assert not p.parent.exists()


def test_atomic_write_onto_a_folder(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match=f"cannot write {d}"):
        atomic_write_bytes(d, b"x")
    assert (d / "keep.txt").read_text() == "x"
    assert temps(tmp_path) == []


def test_atomic_write_below_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic_write_bytes(f / "out.bin", b"x")


@needs_permissions
def test_atomic_write_in_a_read_only_folder(read_only):
    with pytest.raises(OutputError, match="permission denied"):
        atomic_write_bytes(read_only / "new.bin", b"x")
    with pytest.raises(OutputError, match="permission denied"):
        atomic_write_bytes(read_only / "old.bin", b"new")
    assert (read_only / "old.bin").read_bytes() == b"old"
    assert temps(read_only) == []


def test_atomic_write_permission_denied_simulated(tmp_path, monkeypatch):
    # the same refusal where permissions cannot be tested (root): opening the temp fails
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fsutil, "open", denied, raising=False)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'x.bin'}: permission denied"):
        atomic_write_bytes(tmp_path / "x.bin", b"x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- staged file


def test_staged_file_success_creates_parents(tmp_path):
    p = tmp_path / "a" / "b" / "out.txt"
    with staged_file(p) as tmp:
        assert tmp.parent == p.parent and TMP_MARK in tmp.name
        tmp.write_text("whole")
        assert not p.exists()  # nothing at the destination until the block succeeds
    assert p.read_text() == "whole"
    assert temps(p.parent) == []


def test_staged_file_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), staged_file(p) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert temps(tmp_path) == []


def test_staged_file_os_error_in_the_block_is_an_output_error(tmp_path):
    p = tmp_path / "out.txt"
    with pytest.raises(OutputError, match="the disk is full"), staged_file(p) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not p.exists()
    assert temps(tmp_path) == []


def test_staged_file_that_was_never_written(tmp_path):
    p = tmp_path / "out.txt"
    with pytest.raises(OutputError), staged_file(p):
        pass
    assert not p.exists()


# ----------------------------------------------------------------------------- staged folder


def test_staged_folder_success(tmp_path):
    out = tmp_path / "model"
    with staged_folder(out) as d:
        (d / "sub").mkdir()
        (d / "sub" / "w.bin").write_bytes(b"w")
        (d / "config.json").write_text("{}")
        assert not out.exists()
    assert (out / "sub" / "w.bin").read_bytes() == b"w"
    assert (out / "config.json").read_text() == "{}"
    assert temps(tmp_path) == []


def test_staged_folder_replaces_an_empty_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    with staged_folder(out) as d:
        (d / "f").write_text("x")
    assert [p.name for p in out.iterdir()] == ["f"]


def test_staged_folder_refuses_a_folder_that_appeared(tmp_path):
    out = tmp_path / "model"
    with (
        pytest.raises(OutputExistsError, match="appeared while it was being written"),
        staged_folder(out) as d,
    ):
        (d / "new").write_text("new")
        out.mkdir()
        (out / "theirs").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert temps(tmp_path) == []


def test_staged_folder_replace_swaps_a_full_folder(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "stale").write_text("old")
    with staged_folder(out, replace=True) as d:
        (d / "fresh").write_text("new")
    assert [p.name for p in out.iterdir()] == ["fresh"]
    assert temps(tmp_path) == []


def test_staged_folder_replace_over_a_file_leaves_no_temp(tmp_path):
    out = tmp_path / "cache"
    out.write_text("a file where the folder goes")
    with staged_folder(out, replace=True) as d:
        (d / "fresh").write_text("new")
    assert (out / "fresh").read_text() == "new"
    assert temps(tmp_path) == []


def test_staged_folder_failure_leaves_nothing(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ValueError, match="bad"), staged_folder(out) as d:
        (d / "half.bin").write_bytes(b"x")
        raise ValueError("bad")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_failure_keeps_a_replaced_folder(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(ValueError), staged_folder(out, replace=True) as d:
        (d / "new").write_text("new")
        raise ValueError("bad")
    assert [p.name for p in out.iterdir()] == ["old"]
    assert temps(tmp_path) == []


@needs_permissions
def test_staged_folder_in_a_read_only_folder(read_only):
    with pytest.raises(OutputError, match="permission denied"), staged_folder(read_only / "m"):
        pass  # pragma: no cover - never reached


# ----------------------------------------------------------------------------- paths


def test_is_inside(tmp_path):
    a = tmp_path / "a"
    assert is_inside(a, a)
    assert is_inside(a / "b" / "c.txt", a)
    assert is_inside(a / "x" / ".." / "y", a)
    assert not is_inside(tmp_path / "ab", a)  # a common prefix is not a parent
    assert not is_inside(tmp_path / "a2" / "f", a)
    assert not is_inside(tmp_path, a)
    assert not is_inside(a / ".." / "b", a)


def test_is_inside_follows_symlinks(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert is_inside(link / "f", real)
    assert is_inside(real / "f", link)


def test_is_inside_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_inside("data/train.jsonl", tmp_path / "data")
    assert is_inside("./data/../data/x", "data")
    assert not is_inside("data", "data/x")


def test_same_path(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    link = tmp_path / "l.txt"
    link.symlink_to(f)
    hard = tmp_path / "h.txt"
    os.link(f, hard)
    other = tmp_path / "o.txt"
    other.write_text("x")
    assert same_path(f, link)
    assert same_path(f, hard)
    assert same_path(f, tmp_path / "sub" / ".." / "f.txt")
    assert not same_path(f, other)
    assert same_path(tmp_path / "new.zst", tmp_path / "." / "new.zst")  # neither exists
    assert not same_path(tmp_path / "new.zst", tmp_path / "new2.zst")


# ----------------------------------------------------------------------------- check_output


def test_check_output_new_file(tmp_path):
    assert check_output(tmp_path / "out.zst", kind="file") == tmp_path / "out.zst"
    # missing folders on the way are fine: the nearest existing one must be writable
    assert check_output(tmp_path / "x" / "y" / "out.zst", kind="file")


def test_check_output_existing_file(tmp_path):
    p = tmp_path / "out.zst"
    p.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"-o .*out.zst exists.*--overwrite"):
        check_output(p, kind="file")
    assert check_output(p, kind="file", overwrite=True) == p


def test_check_output_wrong_kinds(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a folder; a file is needed"):
        check_output(d, kind="file", overwrite=True)
    with pytest.raises(OutputError, match="is a file; a folder is needed"):
        check_output(f, kind="folder", overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(f / "deeper" / "out.zst", kind="file")


def test_check_output_folders(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    assert check_output(d, kind="folder") == d  # empty: fine
    (d / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not empty.*--overwrite"):
        check_output(d, kind="folder", flag="--save-model")
    with pytest.raises(OutputExistsError) as e:
        check_output(d, kind="folder", flag="")
    assert "--overwrite" not in str(e.value)
    assert check_output(d, kind="folder", overwrite=True) == d


def test_check_output_refuses_its_own_inputs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train = data / "train.jsonl"
    train.write_text("{}\n")
    for out, inputs in [
        (train, [train]),
        (data / "." / "train.jsonl", [train]),
        (data / "out.zst", [data]),  # inside an input folder
        (tmp_path, [train]),  # contains an input
    ]:
        with pytest.raises(OutputError, match="would overwrite this command's own input"):
            check_output(out, kind="file", overwrite=True, inputs=inputs)
    assert check_output(tmp_path / "out.zst", kind="file", inputs=[train, data])


def test_check_output_flag_in_the_message(tmp_path):
    p = tmp_path / "w"
    p.write_text("x")
    with pytest.raises(OutputExistsError, match=r"^--log-file "):
        check_output(p, kind="file", flag="--log-file")


@needs_permissions
def test_check_output_read_only_folder(read_only):
    with pytest.raises(OutputError, match="is not writable"):
        check_output(read_only / "new.zst", kind="file")
    with pytest.raises(OutputError, match="is not writable"):
        check_output(read_only / "a" / "b" / "new.zst", kind="file")


def test_check_output_not_writable_simulated(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=f"{tmp_path} is not writable"):
        check_output(tmp_path / "new.zst", kind="file")


# ----------------------------------------------------------------------------- locks


def test_lock_path_lives_in_the_cache_and_ignores_spelling(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    a = lock_path(tmp_path / "run.zst")
    assert a.parent == cache / "locks" and a.suffix == ".lock"
    assert lock_path("run.zst") == a
    assert lock_path(tmp_path / "x" / ".." / "run.zst") == a
    assert lock_path(tmp_path / "other.zst") != a


def test_exclusive_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "run.zst"
    with exclusive_lock(target, "training"):
        with (
            pytest.raises(RunLockedError, match=f"another process is training {target}"),
            exclusive_lock(target, "training"),
        ):
            pass  # pragma: no cover - never reached
        with exclusive_lock(tmp_path / "other.zst", "training"):
            pass  # another target is another lock
    with exclusive_lock(target, "training"):  # released: can be taken again
        pass
    assert lock_path(target).exists()  # lock files are never removed
    assert not target.exists()  # and nothing is written next to the target


def test_exclusive_lock_is_released_on_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KeyError), exclusive_lock(tmp_path / "t", "writing"):
        raise KeyError("x")
    with exclusive_lock(tmp_path / "t", "writing"):
        pass


def test_exclusive_lock_unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder goes")
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(blocker))
    with (
        pytest.raises(OutputError, match="cannot create the lock folder"),
        exclusive_lock(tmp_path / "t", "writing"),
    ):
        pass  # pragma: no cover - never reached


# ----------------------------------------------------------------------------- bounded reads


def test_read_regular_file(tmp_path):
    p = tmp_path / "f.json"
    p.write_bytes(b"0123456789")
    assert read_regular_file(p, 10, "card", ValueError) == b"0123456789"
    assert read_regular_file(str(p), 100, "card", ValueError) == b"0123456789"
    with pytest.raises(ValueError, match="is 10 bytes; the limit for a card is 9"):
        read_regular_file(p, 9, "card", ValueError)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_regular_file(empty, 0, "card", ValueError) == b""


def test_read_regular_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", 10, "card", ValueError)


def test_read_regular_file_refuses_a_folder(tmp_path):
    with pytest.raises(KeyError, match="is a folder, not a card"):
        read_regular_file(tmp_path, 10, "card", KeyError)


def test_read_regular_file_follows_a_symlink(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    (tmp_path / "l").symlink_to(f)
    assert read_regular_file(tmp_path / "l", 3, "card", ValueError) == b"abc"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_read_regular_file_never_blocks_on_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_regular_file(fifo, 10, "card", ValueError)


def test_read_regular_file_refuses_a_device():
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(ValueError, match="not a regular file"):
        read_regular_file("/dev/zero", 10, "card", ValueError)


@needs_permissions
def test_read_regular_file_permission_denied(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(b"x")
    p.chmod(0)
    try:
        with pytest.raises(ValueError, match="permission denied"):
            read_regular_file(p, 10, "card", ValueError)
    finally:
        p.chmod(0o600)


def test_staged_outputs_get_the_default_file_mode(tmp_path):
    """safetensors and tempfile write 0600; an output folder or file is readable like any
    file the user creates (0666 minus the umask)."""
    import os
    import stat

    from mezo_ckpt.util.fsutil import staged_file, staged_folder

    mask = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "out") as tmp:
            f = tmp / "model.safetensors"
            f.write_bytes(b"x")
            os.chmod(f, 0o600)
        assert stat.S_IMODE((tmp_path / "out" / "model.safetensors").stat().st_mode) == 0o644
        with staged_file(tmp_path / "one.bin") as tmp:
            tmp.write_bytes(b"y")
            os.chmod(tmp, 0o600)
        assert stat.S_IMODE((tmp_path / "one.bin").stat().st_mode) == 0o644
    finally:
        os.umask(mask)
