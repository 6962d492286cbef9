"""mezo_ckpt.trainer.outputs: a run refuses, before any work, outputs that are its inputs
or that exist; its result answers for every evaluation."""

from __future__ import annotations

import pytest

from mezo_ckpt.errors import OutputError, OutputExistsError
from mezo_ckpt.trainer import TrainConfig
from mezo_ckpt.trainer.outputs import TrainResult, check_outputs
from mezo_ckpt.trajectory import Evaluation

CUSTOM = dict(task="custom", template="{text} =", verbalizer={"pos": " p", "neg": " n"})


def paths(tmp_path):
    out = tmp_path / "r.zst"
    return out, tmp_path / "r.zst.partial", tmp_path / "r.zst.log.jsonl"


def test_an_output_that_is_an_input_is_refused(tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text("{}\n")
    cfg = TrainConfig(**CUSTOM, train_file=str(data))
    with pytest.raises(OutputError, match="inputs"):
        check_outputs(cfg, data, tmp_path / "j", tmp_path / "l", resuming=False, overwrite=False)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["output", "journal", "log"])
def test_existing_outputs_need_overwrite(tmp_path, which):
    out, journal, log = paths(tmp_path)
    (out, journal, log)[which].write_text("kept")
    cfg = TrainConfig(**CUSTOM, train_file="x.jsonl")
    with pytest.raises(OutputExistsError):
        check_outputs(cfg, out, journal, log, resuming=False, overwrite=False)
    check_outputs(cfg, out, journal, log, resuming=False, overwrite=True)
    assert (out, journal, log)[which].read_text() == "kept"  # checking writes nothing


def test_the_log_cannot_be_the_run_itself(tmp_path):
    out, journal, _ = paths(tmp_path)
    cfg = TrainConfig(**CUSTOM, train_file="x.jsonl")
    with pytest.raises(OutputError, match="log-file"):
        check_outputs(cfg, out, journal, journal, resuming=False, overwrite=False)


def test_result_metric_lookup(tmp_path):
    evals = [Evaluation(0, "dev", {"accuracy": 0.5}), Evaluation(4, "dev", {"accuracy": 0.75})]
    r = TrainResult(tmp_path / "r.zst", 4, 4, False, evals, 1.0, 0.5, 0.1, "0" * 64)
    assert r.metric("dev", 4) == 0.75 and r.metric("dev", 2) is None
    assert r.metric("test", 4) is None and r.metric("dev", 0, "loss") is None
