"""The trajectory journal: a crash-safe appending writer holding a lock on its file,
and compaction of a finished journal into the final file."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mezo_ckpt.errors import RunLockedError
from mezo_ckpt.trajectory.codec import (
    Evaluation,
    Trajectory,
    _minor,
    chain_digest,
    check_version_features,
    ckpt_frame,
    dump_json,
    eval_frame,
    header_frame,
    preamble,
    read_trajectory,
    records_per_frame,
    step_frame,
    write_trajectory,
)
from mezo_ckpt.trajectory.header import Header
from mezo_ckpt.trajectory.records import (
    StepRecords,
    encode_records,
    header_record_size,
    validate_records,
)
from mezo_ckpt.util.fsutil import os_errors


def _open_locked(path: Path):
    """Open a journal for appending, holding an exclusive ``flock`` on it while open.

    The lock lives with the file itself, so two writers are kept apart whatever their
    cache folders, users or containers (the trainer's run lock lives in the cache).
    Where the file system has no locks, only the run lock guards the journal.

    Raises:
        RunLockedError: another process (or another handle) holds the journal.
        OutputError: the file cannot be opened.
    """
    with os_errors(path, "append to"):
        f = open(path, "ab")  # noqa: SIM115 - long-lived handle, closed by the writer
    try:
        import fcntl
    except ImportError:  # not POSIX
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunLockedError(
            f"another process is writing the journal {path} (it holds the file's lock): "
            "wait for it to finish, or choose another output"
        ) from None
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
        pass
    return f


class TrajectoryWriter:
    """Appends frames to a journal file, each write flushed (and fsynced) before returning.

    A process killed at any moment leaves a file whose complete frames form a valid
    trajectory prefix; :meth:`open_for_resume` drops a torn tail and continues. For a
    bound header (format 1.1) every evaluation and checkpoint gets its chain digest.
    """

    def __init__(
        self,
        path: Path,
        header: Header,
        header_bytes: bytes,
        record_bytes: bytes = b"",
        *,
        fsync: bool = True,
        handle: Any = None,
    ) -> None:
        self.path = Path(path)
        self.header = header
        self.header_bytes = header_bytes
        self.fsync = fsync
        self._rs = header_record_size(header)
        self._records = bytearray(record_bytes)
        self.num_steps = len(record_bytes) // self._rs
        self._f = handle if handle is not None else _open_locked(self.path)

    @classmethod
    def create(cls, path: str | os.PathLike, header: Header | dict, *, fsync: bool = True):
        """Start a new journal (replaces ``path``) holding the preamble and header."""
        p = Path(path)
        header = Header.coerce(header)
        check_version_features(_minor(header), header)  # nothing a reader would refuse
        with os_errors(p.parent, "create the folder"):
            p.parent.mkdir(parents=True, exist_ok=True)  # `-o runs/new/run.zst`
        header_bytes = dump_json(header.to_json())
        frame = header_frame(header_bytes)
        f = _open_locked(p)  # locked before anything is cut: a live run's journal survives
        try:
            with os_errors(p, "write"):
                f.truncate(0)
                f.write(preamble(_minor(header)) + frame)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
        except BaseException:
            f.close()
            raise
        return cls(p, header, header_bytes, fsync=fsync, handle=f)

    @classmethod
    def open_for_resume(
        cls, path: str | os.PathLike, *, fsync: bool = True
    ) -> tuple[TrajectoryWriter, Trajectory]:
        """Read a journal, cut any torn tail, and reopen it for appending."""
        p = Path(path)
        if not p.exists():
            read_trajectory(p)  # the typed "no such trajectory" error, before creating one
        f = _open_locked(p)  # locked before it is read: no other writer is appending
        try:
            traj = read_trajectory(p, allow_truncated_tail=True)
            if traj.truncated_tail:
                with os_errors(p, "repair"):
                    f.truncate(traj.valid_length)
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            f.close()
            raise
        w = cls(p, traj.header, traj.header_bytes, traj.record_bytes, fsync=fsync, handle=f)
        return w, traj

    def chain_at(self, step: int) -> str | None:
        """The chain digest at ``step`` (None for an unbound header)."""
        if self.header.chain is None:
            return None
        return chain_digest(self.header_bytes, self._records, step, self._rs)

    def _write(self, frame: bytes) -> None:
        with os_errors(self.path, "append to"):
            self._f.write(frame)
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())

    def append_steps(self, rec: StepRecords) -> None:
        """Append records for steps ``num_steps .. num_steps + len(rec) - 1``."""
        if len(rec) == 0:
            return
        if (
            rec.coefs.shape[1] != self.header.n_directions
            or (rec.losses is not None) != self.header.records.losses
            or rec.window != self.header.records.history
        ):
            raise ValueError("records do not match the header's record layout")
        if self.num_steps + len(rec) > self.header.total_steps:
            raise ValueError("more steps than total_steps")
        validate_records(rec, self.num_steps)
        per = records_per_frame(self.header)
        for lo in range(0, len(rec), per):
            part = rec.slice(lo, min(len(rec), lo + per))
            self._write(step_frame(self.num_steps, part, decay=self.header.records.decay))
            self._records += encode_records(part, decay=self.header.records.decay)
            self.num_steps += len(part)

    def append_evaluation(self, e: Evaluation) -> Evaluation:
        """Append an evaluation (its chain digest filled in); returns what was written."""
        if not 0 <= e.step <= self.num_steps:
            raise ValueError(f"evaluation at step {e.step} but {self.num_steps} steps recorded")
        if not all(math.isfinite(v) for v in e.metrics.values()):
            raise ValueError(f"evaluation metrics must be finite: {e.metrics}")
        e = Evaluation(e.step, e.split, dict(e.metrics), self.chain_at(e.step))
        self._write(eval_frame(e))
        return e

    def append_checkpoint(self, step: int, digest: str) -> None:
        if not 0 <= step <= self.num_steps:
            raise ValueError(f"checkpoint at step {step} but {self.num_steps} steps recorded")
        self._write(ckpt_frame(step, digest, self.chain_at(step)))

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compact(journal: str | os.PathLike, final: str | os.PathLike) -> Trajectory:
    """Rewrite a journal into its compact form at ``final`` (atomically); keeps the journal."""
    traj = read_trajectory(journal)
    write_trajectory(final, traj)
    return traj


def rewrite_journal(
    path: str | os.PathLike, traj: Trajectory, header: Header, *, fsync: bool = True
) -> tuple[TrajectoryWriter, Trajectory]:
    """Rewrite the journal at ``path`` under a new ``header`` (a run extended, or a loop
    that learns its number of steps when it ends), carrying the records, evaluations and
    fingerprints over (each re-bound to the new header), and reopen it for appending.
    The old journal stays whole until the new one is renamed over it."""
    from mezo_ckpt.util.fsutil import staged_file

    p = Path(path)
    with staged_file(p) as tmp:
        w = TrajectoryWriter.create(tmp, header, fsync=fsync)
        try:
            w.append_steps(traj.records)
            for e in traj.evaluations:
                w.append_evaluation(e)
            for s, d in sorted(traj.checkpoints.items()):
                w.append_checkpoint(s, d)
        finally:
            w.close()
    return TrajectoryWriter.open_for_resume(p, fsync=fsync)
