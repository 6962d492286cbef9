"""The trajectory: typed header, step records, the pure codec and reader, the journal
(appending writer with its lock, compaction), and what a step of a file may claim.

The names most code needs are importable from here; the submodules hold the rest.
"""

from mezo_ckpt.trajectory.codec import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    Evaluation,
    Trajectory,
    chain_digest,
    parse_trajectory,
    read_trajectory,
    read_trajectory_bytes,
    serialize,
    strict_json,
    write_trajectory,
)
from mezo_ckpt.trajectory.journal import TrajectoryWriter, compact
from mezo_ckpt.trajectory.records import (
    FLAG_SKIPPED,
    StepRecords,
    decode_records,
    encode_records,
    record_size,
)

__all__ = [
    "FLAG_SKIPPED",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "Evaluation",
    "StepRecords",
    "Trajectory",
    "TrajectoryWriter",
    "chain_digest",
    "compact",
    "decode_records",
    "encode_records",
    "parse_trajectory",
    "read_trajectory",
    "read_trajectory_bytes",
    "record_size",
    "serialize",
    "strict_json",
    "write_trajectory",
]
