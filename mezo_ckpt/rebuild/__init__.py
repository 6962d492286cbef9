"""The rebuild pipeline: edits (a trajectory to a step, a delta) x sources (a loaded
model, a streamed folder) x sinks (model, folders, files, statistics)."""

from mezo_ckpt.rebuild.inplace import replay_model, replay_tensors
from mezo_ckpt.rebuild.pipeline import Outcome, rebuild
from mezo_ckpt.rebuild.plan import DeltaEdit, Plan, Verdict
from mezo_ckpt.rebuild.sinks import (
    DeltaSink,
    DiffSink,
    HfFolderSink,
    ModelSink,
    PeftSink,
    SafetensorsSink,
    ShardSink,
)
from mezo_ckpt.rebuild.sources import FolderStream, ModelSource, StateSource, TensorsSource

__all__ = [
    "DeltaEdit",
    "DeltaSink",
    "DiffSink",
    "FolderStream",
    "HfFolderSink",
    "ModelSink",
    "ModelSource",
    "Outcome",
    "PeftSink",
    "Plan",
    "SafetensorsSink",
    "ShardSink",
    "StateSource",
    "TensorsSource",
    "Verdict",
    "rebuild",
    "replay_model",
    "replay_tensors",
]
