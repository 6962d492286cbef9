"""mezo_ckpt.MeZO (mezo_ckpt/trainer/optimizer.py): MeZO in a user's own loop over any
module, replayed bit for bit onto the module, its state dict or a safetensors file."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from paths import ROOT
from safetensors.torch import load_file, save_file

import mezo_ckpt
from mezo_ckpt.errors import (
    BaseMismatchError,
    ConfigError,
    DataError,
    OutputError,
    OutputExistsError,
    RunLockedError,
    TrainingDivergedError,
)
from mezo_ckpt.trainer.optimizer import MeZO
from mezo_ckpt.trajectory import read_trajectory


class Net(torch.nn.Module):
    """A small CNN + MLP head (not a Hugging Face model), with a batch-norm buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def make_net(dtype=torch.float32) -> Net:
    torch.manual_seed(0)
    return Net().to(dtype)


def data(n=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g)


def loop(model, out, steps=6, **kw):
    x, y = data(dtype=next(model.parameters()).dtype)
    kw.setdefault("lr", 1e-2)
    with MeZO(model, output=out, **kw) as opt:
        for s in range(steps):
            i = slice(8 * (s % 4), 8 * (s % 4) + 8)
            opt.step(lambda i=i: F.cross_entropy(model(x[i]).float(), y[i]))
    return opt


def assert_equal_states(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "dtype,kw",
    [
        (torch.float32, {}),
        (torch.float32, {"estimator": "one-sided", "n_directions": 2}),
        (torch.float32, {"momentum": 0.7, "momentum_window": 3, "weight_decay": 0.1}),
        (torch.bfloat16, {"rounding": "stochastic"}),
        (torch.bfloat16, {"estimator": "fzoo", "n_directions": 3, "rounding": "stochastic"}),
    ],
)
def test_replay_equals_the_trained_module(tmp_path, dtype, kw):
    model = make_net(dtype)
    init = copy.deepcopy(model.state_dict())
    loop(model, tmp_path / "run.zst", **kw)
    assert not all(torch.equal(init[k], v) for k, v in model.state_dict().items())
    # onto the module
    fresh = make_net(dtype)
    rebuilt = mezo_ckpt.replay(tmp_path / "run.zst", fresh)
    assert rebuilt.mezo_ckpt["verified"] == "fingerprint"
    assert_equal_states(rebuilt.state_dict(), model.state_dict())
    # onto the state dict (returned as a state dict; the offered one is not changed)
    before = {k: v.clone() for k, v in init.items()}
    state = mezo_ckpt.replay(tmp_path / "run.zst", init)
    assert_equal_states(state, model.state_dict())
    assert_equal_states(init, before)
    # onto a safetensors file
    save_file(init, tmp_path / "init.safetensors")
    assert_equal_states(mezo_ckpt.replay(tmp_path / "run.zst", tmp_path / "init.safetensors"),
                        model.state_dict())  # fmt: skip


def test_cli_replays_onto_a_safetensors_base(tmp_path):
    model = make_net()
    save_file(model.state_dict(), tmp_path / "init.safetensors")
    loop(model, tmp_path / "run.zst")
    cmd = [sys.executable, "-m", "mezo_ckpt", "replay", str(tmp_path / "run.zst"), "--base",
           str(tmp_path / "init.safetensors"), "--format", "safetensors", "-o",
           str(tmp_path / "out.safetensors")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    assert_equal_states(load_file(tmp_path / "out.safetensors"), model.state_dict())
    # an hf folder needs a config: refused before any work, with the format to use
    cmd[-4:] = ["--format", "hf", "-o", str(tmp_path / "folder")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "--format safetensors" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "folder").exists()


def test_lr_zero_leaves_every_weight_identical(tmp_path):
    model = make_net()
    init = copy.deepcopy(model.state_dict())
    loop(model, tmp_path / "run.zst", lr=0.0)
    assert_equal_states(model.state_dict(), init)


def test_micro_batches_under_one_direction_match_one_batch(tmp_path):
    """Gradient accumulation: a closure over 2 micro-batches of 8 measures the same loss
    as one batch of 16, so the coefficients agree to float tolerance."""
    x, y = data(16)
    coefs = []
    for name, closure in (
        ("one", lambda m: F.cross_entropy(m(x), y)),
        ("two", lambda m: sum(F.cross_entropy(m(x[i : i + 8]), y[i : i + 8]) for i in (0, 8)) / 2),
    ):
        model = make_net()
        with MeZO(model, lr=1e-2, output=tmp_path / f"{name}.zst", n_directions=2) as opt:
            for _ in range(4):
                opt.step(lambda m=model, c=closure: c(m))
        coefs.append(read_trajectory(tmp_path / f"{name}.zst").records)
    one, two = coefs
    np.testing.assert_allclose(one.losses, two.losses, rtol=4e-7)
    # a coefficient carries the losses' float32 roundoff through lr (L+ - L-) / (2 n eps)
    tol = 1e-2 * 8 * np.finfo(np.float32).eps * np.abs(one.losses).max() / (2 * 2 * 1e-3)
    np.testing.assert_allclose(one.coefs, two.coefs, rtol=0, atol=tol)
    assert np.count_nonzero(one.coefs) == one.coefs.size


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch.nn.functional as F
    from trainer.test_optimizer import make_net, data
    from mezo_ckpt.trainer.optimizer import MeZO
    model = make_net()
    x, y = data()
    opt = MeZO(model, lr=1e-2, output={out!r}, momentum=0.5, momentum_window=2)
    for s in range(3):
        i = slice(8 * s, 8 * s + 8)
        opt.step(lambda: F.cross_entropy(model(x[i]), y[i]))
        if s == 1:
            opt.record_eval({{"accuracy": 0.25}})
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_loop_resumes_to_the_straight_run(tmp_path):
    straight = make_net()
    loop(straight, tmp_path / "straight.zst", steps=6, momentum=0.5, momentum_window=2)
    out = tmp_path / "run.zst"
    script = KILLED.format(tests=str(ROOT / "tests"), out=str(out))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists() and (tmp_path / "run.zst.partial").exists()
    model = make_net()  # the initial model again
    x, y = data()
    with MeZO(model, lr=1e-2, output=out, momentum=0.5, momentum_window=2, resume=True) as opt:
        assert opt.steps_done == 3
        for s in range(opt.steps_done, 6):
            i = slice(8 * (s % 4), 8 * (s % 4) + 8)
            opt.step(lambda i=i: F.cross_entropy(model(x[i]), y[i]))
    assert_equal_states(model.state_dict(), straight.state_dict())
    a, b = read_trajectory(out), read_trajectory(tmp_path / "straight.zst")
    assert a.record_bytes == b.record_bytes
    assert [e.metrics for e in a.evaluations] == [{"accuracy": 0.25}]


def test_resume_auto_and_extend_an_open_ended_run(tmp_path):
    out = tmp_path / "run.zst"
    straight = make_net()
    loop(straight, tmp_path / "straight.zst", steps=6)
    model = make_net()
    loop(model, out, steps=4, resume="auto")  # nothing there: starts
    assert read_trajectory(out).complete and read_trajectory(out).num_steps == 4
    model = make_net()
    x, y = data()
    with MeZO(model, lr=1e-2, output=out, resume="auto") as opt:  # sealed: continues
        for s in range(opt.steps_done, 6):
            i = slice(8 * (s % 4), 8 * (s % 4) + 8)
            opt.step(lambda i=i: F.cross_entropy(model(x[i]), y[i]))
    assert_equal_states(model.state_dict(), straight.state_dict())
    assert read_trajectory(out).num_steps == 6


def test_resume_refuses_other_settings_and_a_trained_model(tmp_path):
    out = tmp_path / "run.zst"
    model = make_net()
    loop(model, out, steps=2)
    with pytest.raises(ConfigError, match="eps cannot change"):
        MeZO(make_net(), lr=1e-2, eps=1e-2, output=out, resume=True)
    with pytest.raises(BaseMismatchError, match="initial"):
        MeZO(model, lr=1e-2, output=out, resume=True)  # already trained: not the base
    assert not (tmp_path / "run.zst.partial").exists()  # a refused resume leaves nothing
    with pytest.raises(mezo_ckpt.errors.TrajectoryNotFoundError):
        MeZO(make_net(), lr=1e-2, output=tmp_path / "none.zst", resume=True)


def test_outputs_are_never_clobbered_and_one_writer_at_a_time(tmp_path):
    out = tmp_path / "run.zst"
    loop(make_net(), out, steps=1)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="resume=True"):
        MeZO(make_net(), lr=1e-2, output=out)
    assert out.read_bytes() == before
    opt = MeZO(make_net(), lr=1e-2, output=tmp_path / "b.zst")
    with pytest.raises(RunLockedError):
        MeZO(make_net(), lr=1e-2, output=tmp_path / "b.zst", overwrite=True)
    opt.close()
    loop(make_net(), out, steps=2, overwrite=True)
    assert read_trajectory(out).num_steps == 2


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"learning_rate": 1}, "did you mean 'lr'"),
        ({"lr": -1.0}, "lr=-1.0: must be >= 0"),
        ({"estimator": "fzoo"}, "n-directions 2"),
        ({"schedule": "cosine"}, "needs total_steps"),
        ({"total_steps": 0}, "positive integer"),
        ({"trainable": ["cnv.*"]}, "did you mean 'conv.*'"),
        ({"resume": "yes"}, "True, False or 'auto'"),
    ],
)
def test_bad_settings_are_typed_errors(tmp_path, kw, match):
    kw = {"lr": 1e-2, **kw}
    with pytest.raises(ConfigError, match=match):
        MeZO(make_net(), output=tmp_path / "r.zst", **kw)
    assert not list(tmp_path.iterdir())


def test_mixed_dtypes_and_non_modules_are_refused(tmp_path):
    net = make_net()
    net.fc.half()
    with pytest.raises(ConfigError, match="one dtype"):
        MeZO(net, lr=1e-2, output=tmp_path / "r.zst")
    with pytest.raises(TypeError):
        MeZO(net.state_dict(), lr=1e-2, output=tmp_path / "r.zst")
    assert not (tmp_path / "r.zst.partial").exists()


def test_a_bad_closure_records_nothing_and_moves_nothing(tmp_path):
    model = make_net()
    init = copy.deepcopy(model.state_dict())
    x, _ = data()
    with MeZO(model, lr=1e-2, output=tmp_path / "r.zst") as opt:
        with pytest.raises(DataError, match="shape"):
            opt.step(lambda: model(x).sum(1))
        with pytest.raises(DataError, match="not str"):
            opt.step(lambda: "1.0")
        with pytest.raises(ZeroDivisionError):
            opt.step(lambda: 1 / 0)
        assert opt.steps_done == 0
        assert_equal_states(model.state_dict(), init)
        with pytest.raises(TypeError):
            opt.step()
    # the fresh run recorded nothing but a sealed empty file is still valid
    assert read_trajectory(tmp_path / "r.zst").num_steps == 0


def test_an_exception_in_the_with_block_keeps_the_steps(tmp_path):
    model = make_net()
    x, y = data()
    with pytest.raises(KeyboardInterrupt), MeZO(model, lr=1e-2, output=tmp_path / "r.zst") as opt:
        opt.step(lambda: F.cross_entropy(model(x), y))
        raise KeyboardInterrupt
    traj = read_trajectory(tmp_path / "r.zst")
    assert traj.num_steps == 1 and 1 in traj.checkpoints
    with pytest.raises(RuntimeError), MeZO(make_net(), lr=1e-2, output=tmp_path / "e.zst"):
        raise RuntimeError  # before any step: nothing is left behind
    assert not list(tmp_path.glob("e.zst*"))


def test_divergence_seals_and_raises(tmp_path):
    model = make_net()
    with MeZO(model, lr=1e-2, output=tmp_path / "r.zst") as opt:
        opt.step(lambda: 1.0)
        with pytest.raises(TrainingDivergedError, match="smaller lr"):
            for _ in range(3):
                opt.step(lambda: float("nan"))
        assert opt.closed
        with pytest.raises(OutputError, match="closed"):
            opt.step(lambda: 1.0)
    assert read_trajectory(tmp_path / "r.zst").num_steps == 4


def test_evaluations_schedules_and_total_steps(tmp_path):
    model = make_net()
    x, y = data()
    out = tmp_path / "r.zst"
    with MeZO(model, lr=1e-2, output=out, total_steps=3, schedule="linear") as opt:
        assert opt.forwards_per_step == 2
        assert opt.lr_at(0) == 1e-2 and opt.lr_at(2) < opt.lr_at(1)
        with pytest.raises(ConfigError, match="finite"):
            opt.step(lambda: 1.0, lr=float("nan"))
        for _ in range(3):
            opt.step(lambda: F.cross_entropy(model(x), y))
            opt.record_eval({"accuracy": 0.5, "loss": torch.tensor(1.5)})
        with pytest.raises(ConfigError, match="all 3 steps"):
            opt.step(lambda: 1.0)
        with pytest.raises(DataError, match="finite"):
            opt.record_eval({"accuracy": float("inf")})
        with pytest.raises(ValueError, match="weights are at step 3"):
            opt.record_eval({"accuracy": 1.0}, step=1)
    traj = read_trajectory(out)
    assert traj.complete and sorted(traj.checkpoints) == [1, 2, 3]
    assert [e.metrics["loss"] for e in traj.evaluations] == [1.5, 1.5, 1.5]
    best = mezo_ckpt.replay(out, make_net(), step="best")
    assert best.mezo_ckpt["step"] == 1


def test_a_hugging_face_model_in_a_plain_loop_replays_from_its_folder(tmp_path):
    from tinymodels import save_tiny, tiny_tokenizer
    from transformers import AutoModelForCausalLM

    save_tiny(tmp_path / "base", "gpt2")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    ids = torch.randint(1, 90, (4, 10), generator=torch.Generator().manual_seed(0))
    with MeZO(model, lr=1e-3, output=tmp_path / "r.zst", tokenizer=tiny_tokenizer()) as opt:
        for _ in range(3):
            opt.step(lambda: model(input_ids=ids, labels=ids).loss)
    again = mezo_ckpt.replay(tmp_path / "r.zst", str(tmp_path / "base"))
    assert again.mezo_ckpt["verified"] == "fingerprint"
    assert_equal_states(again.state_dict(), model.state_dict())


def test_wrong_state_dicts_are_refused_and_untouched(tmp_path):
    model = make_net()
    init = copy.deepcopy(model.state_dict())
    loop(model, tmp_path / "r.zst", steps=2)
    changed = {**init, "fc.bias": init["fc.bias"] + 1}
    extra = {**init, "other": torch.zeros(2)}
    missing = {k: v for k, v in init.items() if k != "bn.running_mean"}
    reshaped = {**init, "fc.bias": init["fc.bias"].reshape(2, 5)}
    for bad, what in ((changed, "fc.bias"), (extra, "other"), (missing, "running_mean"),
                      (reshaped, "fc.bias")):  # fmt: skip
        keep = {k: v.clone() for k, v in bad.items()}
        with pytest.raises(BaseMismatchError, match=what):
            mezo_ckpt.replay(tmp_path / "r.zst", bad)
        assert_equal_states(bad, keep)
    with pytest.raises(TypeError):
        mezo_ckpt.replay(tmp_path / "r.zst", {"fc.bias": [1.0]})
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(mezo_ckpt.errors.ModelLoadError):
        mezo_ckpt.replay(tmp_path / "r.zst", tmp_path / "junk.safetensors")


def test_the_cli_trainer_and_the_optimizer_share_one_step():
    """One step implementation: the recipe's loop and MeZO.step both call take_step."""
    import inspect

    from mezo_ckpt.trainer import optimizer, recipe

    for module in (optimizer, recipe):
        src = inspect.getsource(module)
        assert "take_step(" in src and ".estimate(" not in src and "append_steps(" not in src


def test_public_names():
    assert mezo_ckpt.MeZO is MeZO
    assert "MeZO" in dir(mezo_ckpt) and "MezoTrainer" in dir(mezo_ckpt)
    assert os.path.basename(mezo_ckpt.MezoTrainer.__module__.replace(".", "/")) == "hf_trainer"


def tiny_roberta():
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(3)
    config = RobertaConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, pad_token_id=0,
    )  # fmt: skip
    return RobertaForMaskedLM(config)


def test_a_masked_lm_in_a_users_loop_replays(tmp_path):
    """A tiny RoBERTa (tied decoder) trained on masked tokens in a plain loop."""
    model = tiny_roberta()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 96, (8, 16), generator=g)
    mask = torch.rand(ids.shape, generator=g) < 0.15
    inputs = ids.masked_fill(mask, 3)
    labels = ids.masked_fill(~mask, -100)
    with MeZO(model, lr=1e-3, output=tmp_path / "mlm.zst", n_directions=2) as opt:
        for _ in range(3):
            opt.step(lambda: model(input_ids=inputs, labels=labels).loss)
    rebuilt = mezo_ckpt.replay(tmp_path / "mlm.zst", tiny_roberta())
    assert rebuilt.mezo_ckpt["verified"] == "fingerprint"
    assert_equal_states(rebuilt.state_dict(), model.state_dict())
    assert not torch.equal(model.lm_head.dense.weight, tiny_roberta().lm_head.dense.weight)


# ----------------------------------------------------------------------------- attacks


def killed_journal(tmp_path, steps=5):
    """A run's journal as a kill leaves it (no seal), and the initial model's maker."""
    model = make_net()
    x, y = data()
    opt = MeZO(model, lr=1e-2, output=tmp_path / "k.zst")
    for s in range(steps):
        opt.step(lambda s=s: F.cross_entropy(model(x[8 * (s % 4) :][:8]), y[8 * (s % 4) :][:8]))
    opt.writer.close()
    opt._stack.close()  # the lock goes with the process
    return tmp_path / "k.zst.partial"


def test_a_damaged_frame_followed_by_good_ones_is_corruption_not_a_cut(tmp_path):
    """A flipped bit must not make resume treat the rest of a journal as a torn tail and
    cut it (silently losing the steps after it)."""
    from mezo_ckpt.errors import TrajectoryFormatError
    from mezo_ckpt.trajectory.codec import parse_trajectory

    journal = killed_journal(tmp_path)
    good = journal.read_bytes()
    full = parse_trajectory(good, allow_truncated_tail=True).num_steps
    header_end = len(good) - 5 * 40  # roughly where the step frames start
    for pos in range(max(12, header_end), len(good) - 40, 3):
        bad = bytearray(good)
        bad[pos] ^= 0x10
        try:
            traj = parse_trajectory(bytes(bad), allow_truncated_tail=True)
        except TrajectoryFormatError:
            continue
        assert traj.num_steps == full, f"flip at {pos} silently dropped steps"
    bad = bytearray(good)
    bad[len(good) - 3 * 30] ^= 0x10
    journal.write_bytes(bytes(bad))
    with pytest.raises(mezo_ckpt.errors.TrajectoryFormatError):
        MeZO(make_net(), lr=1e-2, output=tmp_path / "k.zst", resume=True)
    assert journal.read_bytes() == bytes(bad)  # not cut


def test_an_evaluation_the_reader_would_refuse_is_refused_when_recorded(tmp_path):
    model = make_net()
    with MeZO(model, lr=1e-2, output=tmp_path / "r.zst") as opt:
        opt.step(lambda: 1.0)
        with pytest.raises(DataError, match="limit of 65,536"):
            opt.record_eval({f"m{i}": 0.5 for i in range(20_000)})
        with pytest.raises(DataError):
            opt.record_eval({"accuracy": 0.5}, split="x" * 100_000)
        opt.record_eval({"accuracy": 0.5})
    traj = read_trajectory(tmp_path / "r.zst")  # still readable, resumable
    assert [e.metrics for e in traj.evaluations] == [{"accuracy": 0.5}]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "1.0",
        torch.ones(2),
        torch.ones(1, dtype=torch.complex64),
        torch.empty(1, device="meta"),
        10**400,
        True,
    ],  # fmt: skip
)
def test_odd_closure_results_are_typed_errors(tmp_path, value):
    model = make_net()
    with MeZO(model, lr=1e-2, output=tmp_path / "r.zst") as opt:
        with pytest.raises(DataError):
            opt.step(lambda: value)
        assert opt.steps_done == 0
        opt.step(lambda: np.float32(1.5))  # numpy scalars are numbers
        assert opt.steps_done == 1


def test_the_closure_cannot_call_back_into_the_optimizer(tmp_path):
    model = make_net()
    with MeZO(model, lr=1e-2, output=tmp_path / "r.zst") as opt:
        for call in (lambda: opt.step(lambda: 1.0), lambda: opt.record_eval({"a": 1.0})):
            with pytest.raises(ConfigError, match="inside the step's closure"):
                opt.step(lambda call=call: call() or 1.0)
        opt.step(lambda: 1.0)  # and it goes on
    assert read_trajectory(tmp_path / "r.zst").evaluations == []


def test_a_file_cut_after_its_header_is_not_replayed_as_the_result(tmp_path):
    from mezo_ckpt.errors import StepOutOfRangeError

    model = make_net()
    init = copy.deepcopy(model.state_dict())
    loop(model, tmp_path / "r.zst", total_steps=6)
    from mezo_ckpt.trajectory.codec import PREAMBLE_SIZE, _frame_length

    data = (tmp_path / "r.zst").read_bytes()
    cut = tmp_path / "cut.zst"
    cut.write_bytes(data[: PREAMBLE_SIZE + _frame_length(memoryview(data), PREAMBLE_SIZE)])
    assert read_trajectory(cut).num_steps == 0
    with pytest.raises(StepOutOfRangeError, match="records no step"):
        mezo_ckpt.replay(cut, init)
    assert_equal_states(mezo_ckpt.replay(cut, init, step=0), init)  # asked for: the base


def test_failed_resumes_leave_nothing_behind(tmp_path):
    out = tmp_path / "r.zst"
    out.write_bytes(b"not a trajectory")
    with pytest.raises(mezo_ckpt.errors.TrajectoryFormatError):
        MeZO(make_net(), lr=1e-2, output=out, resume=True)
    with pytest.raises(mezo_ckpt.errors.TrajectoryFormatError):
        MeZO(make_net(), lr=1e-2, output=out, resume="auto")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zst"]
    (tmp_path / "folder.zst").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        MeZO(make_net(), lr=1e-2, output=tmp_path / "folder.zst")


def test_meta_state_dicts_are_refused(tmp_path):
    model = make_net()
    loop(model, tmp_path / "r.zst", steps=1)
    meta = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="meta"):
        mezo_ckpt.replay(tmp_path / "r.zst", meta)


def test_parameters_marked_frozen_stay_frozen(tmp_path):
    model = make_net()
    model.conv.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    loop(model, tmp_path / "r.zst", steps=3)
    trainable = read_trajectory(tmp_path / "r.zst").header.trainable
    assert trainable == ("bn.bias", "bn.weight", "fc.bias", "fc.weight")
    after = model.state_dict()
    assert torch.equal(after["conv.weight"], before["conv.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    whole = make_net().requires_grad_(False)  # frozen whole, as for inference: the globs rule
    loop(whole, tmp_path / "w.zst", steps=1)
    assert len(read_trajectory(tmp_path / "w.zst").header.trainable) == 6


def test_cli_diff_of_a_plain_module_run_against_its_safetensors_base(tmp_path):
    model = make_net()
    init = copy.deepcopy(model.state_dict())
    save_file(init, tmp_path / "init.safetensors")
    loop(model, tmp_path / "run.zst")
    cmd = [sys.executable, "-m", "mezo_ckpt", "diff", str(tmp_path / "run.zst"), "--base",
           str(tmp_path / "init.safetensors"), "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    got = json.loads(r.stdout)
    want = (model.fc.weight - init["fc.weight"]).norm().item()
    norms = got["tensors"]
    assert abs(norms["fc.weight"]["norm"] - want) <= 1e-5 * max(1.0, want)


def test_an_output_in_a_new_folder_is_created(tmp_path):
    out = tmp_path / "runs" / "exp1" / "r.zst"
    loop(make_net(), out, steps=1)
    assert read_trajectory(out).num_steps == 1
