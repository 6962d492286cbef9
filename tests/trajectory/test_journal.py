"""mezo_ckpt.trajectory.journal: the writer keeps a lock on its file, writes nothing a
reader would refuse, and its compact form reads back the same."""

from __future__ import annotations

import pytest
from helpers_format import HEX_A, make_header, make_header_v11, make_records

from mezo_ckpt.errors import HeaderError, RunLockedError
from mezo_ckpt.trajectory import TrajectoryWriter, compact, read_trajectory


def test_two_writers_cannot_hold_one_journal(tmp_path):
    j = tmp_path / "r.zst.partial"
    with TrajectoryWriter.create(j, make_header_v11(total_steps=4), fsync=False):
        with pytest.raises(RunLockedError):
            TrajectoryWriter.create(j, make_header_v11(total_steps=4), fsync=False)
        with pytest.raises(RunLockedError):
            TrajectoryWriter.open_for_resume(j, fsync=False)


@pytest.mark.parametrize(
    "header",
    [
        make_header(total_steps=4, integrity={"chain": "sha256-records-v1"}),  # no whole base
        {**make_header_v11(total_steps=4)} | {"integrity": None},
    ],
    ids=["chain-without-whole-base", "whole-base-without-chain"],
)
def test_the_writer_refuses_what_a_reader_would(tmp_path, header):
    header = {k: v for k, v in header.items() if v is not None}
    j = tmp_path / "bad.partial"
    with pytest.raises(HeaderError, match="§3.1"):
        TrajectoryWriter.create(j, header, fsync=False)
    assert not j.exists() or j.stat().st_size == 0


def test_compact_form_reads_back_the_same(tmp_path):
    j = tmp_path / "r.zst.partial"
    rec = make_records(7, seed=5)
    with TrajectoryWriter.create(j, make_header_v11(total_steps=7), fsync=False) as w:
        w.append_steps(rec)
        w.append_checkpoint(7, HEX_A)
    journal = read_trajectory(j)
    compact(j, tmp_path / "r.zst")
    final = read_trajectory(tmp_path / "r.zst")
    assert final.version == journal.version == (1, 1) and final.sealed
    assert final.chains == journal.chains and final.header_bytes == journal.header_bytes
    assert final.records.coefs.tobytes() == rec.coefs.tobytes()
