"""Training engine: weights never corrupted, replay == training, resume == straight run."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers_train import assert_same, config, state, write_jsonl
from tinymodels import save_tiny, tiny_model, toy_sentiment

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import ConfigError, DataError, ModelLoadError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trainer import TrainConfig, train
from mezo_ckpt.trainer.perturb import Perturber
from mezo_ckpt.trajectory import read_trajectory


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    return {
        "train_file": write_jsonl(d / "train.jsonl", toy_sentiment(400, 0)),
        "dev_file": write_jsonl(d / "dev.jsonl", toy_sentiment(64, 1)),
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[tuple[str, str], str]:
    """Tiny model folders per (arch, dtype)."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for arch in ("gpt2", "llama", "opt"):
        for dt in ("float32", "bfloat16", "float16"):
            folder = root / f"{arch}-{dt}"
            save_tiny(folder, arch, dtype=getattr(torch, dt))
            out[(arch, dt)] = str(folder)
    return out


# ----------------------------------------------------------------------------- promise 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_lr_zero_leaves_weights_bit_identical(bases, toy_data, tmp_path, dtype):
    base = bases[("llama", dtype)]
    before = state(load_base(base, dtype=dtype).model)
    r = train(
        config(base, toy_data, tmp_path / "t.zst", dtype=dtype, lr=0.0, steps=25, eval_every=0),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    assert r.steps == 25
    assert_same(before, state(r.model))
    # The same perturbation schedule applied in place, as the official code does,
    # does change the weights: the test above could fail.
    model = load_base(base, dtype=dtype).model
    params = canonical_parameters(model)
    with torch.no_grad():
        for step in range(5):
            for p in params.values():
                g = torch.Generator().manual_seed(step)
                z = torch.randn(p.shape, generator=g).to(p.dtype)
                p.add_(z, alpha=1e-2)
                p.add_(z, alpha=-2e-2)
                p.add_(z, alpha=1e-2)
    changed = sum(int((params[n] != before[n]).sum()) for n in params)
    assert changed > 0


# ----------------------------------------------------------------------------- replay


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_replay_equals_training_final_and_intermediate(bases, toy_data, tmp_path, arch, dtype):
    base = bases[(arch, dtype)]
    kw = dict(
        dtype=dtype,
        weight_decay=0.1 if arch == "opt" else 0.0,
        frozen=["*layers.0.*"] if arch == "llama" else [],
    )
    short = train(
        config(base, toy_data, tmp_path / "short.zst", steps=3, **kw),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    full = train(
        config(base, toy_data, tmp_path / "full.zst", steps=6, **kw),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    traj = read_trajectory(tmp_path / "full.zst")
    assert traj.complete and traj.num_steps == 6
    for step, expected in ((6, full.model), (3, short.model)):
        model = load_base(base, dtype=dtype).model
        report = replay_model(traj, model, step=step)
        assert_same(state(expected), state(model))
        assert report.verified  # fingerprints are stored at every evaluated step
    if arch == "llama":  # frozen parameters stay at the base values
        full_state = state(full.model)
        base_state = state(load_base(base, dtype=dtype).model)
        frozen = [n for n in full_state if "layers.0." in n]
        assert frozen and all(torch.equal(full_state[n], base_state[n]) for n in frozen)
        assert not any("layers.0." in n for n in traj.header.trainable)


# ----------------------------------------------------------------------------- resume


def test_resume_after_hard_kill_equals_straight_run(bases, toy_data, tmp_path, monkeypatch):
    base = bases[("llama", "float32")]
    straight = train(
        config(base, toy_data, tmp_path / "a.zst", steps=8),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    out = tmp_path / "b.zst"
    real_lr = TrainConfig.lr_at

    def dying(self, step):
        if step == 5:
            raise RuntimeError("simulated crash")
        return real_lr(self, step)

    monkeypatch.setattr(TrainConfig, "lr_at", dying)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config(base, toy_data, out, steps=8), progress=False, log=lambda s: None)
    monkeypatch.setattr(TrainConfig, "lr_at", real_lr)
    journal = out.with_name(out.name + ".partial")
    assert not out.exists() and journal.exists()
    # A torn write at the end of the journal (the kill hit mid-frame) is cut on resume.
    with open(journal, "ab") as f:
        f.write(b"\x28\xb5\x2f\xfd\x00\x01")
    assert read_trajectory(journal, allow_truncated_tail=True).num_steps == 5
    resumed = train(
        config(base, toy_data, out, steps=8),
        resume=out,
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    assert_same(state(straight.model), state(resumed.model))
    a, b = read_trajectory(tmp_path / "a.zst"), read_trajectory(out)
    for field in ("flags", "coefs", "decay", "losses"):
        assert (getattr(a.records, field) == getattr(b.records, field)).all()
    assert a.checkpoints == b.checkpoints
    same = [(e.step, e.split, e.metrics) for e in a.evaluations]
    assert same == [(e.step, e.split, e.metrics) for e in b.evaluations]


def test_ctrl_c_stops_cleanly_and_resumes(bases, toy_data, tmp_path, monkeypatch):
    base = bases[("gpt2", "float32")]
    straight = train(
        config(base, toy_data, tmp_path / "a.zst", steps=6),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    out = tmp_path / "b.zst"
    real_lr = TrainConfig.lr_at

    def interrupting(self, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_lr(self, step)

    monkeypatch.setattr(TrainConfig, "lr_at", interrupting)
    r = train(config(base, toy_data, out, steps=6), progress=False, log=lambda s: None)
    monkeypatch.setattr(TrainConfig, "lr_at", real_lr)
    assert r.interrupted and r.steps == 3
    partial = read_trajectory(out)  # a valid, strict-readable file
    assert partial.num_steps == 3 and not partial.complete and 3 in partial.checkpoints
    resumed = train(
        config(base, toy_data, out, steps=6),
        resume=out,
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    assert_same(state(straight.model), state(resumed.model))


def test_resume_refuses_other_settings_and_complete_files(bases, toy_data, tmp_path):
    base = bases[("llama", "float32")]
    out = tmp_path / "a.zst"
    train(config(base, toy_data, out, steps=2), progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="already complete"):
        train(config(base, toy_data, out, steps=2), resume=out, progress=False)
    with pytest.raises(ConfigError, match="lr cannot change when resuming"):
        train(config(base, toy_data, out, steps=2, lr=1e-4), resume=out, progress=False)


# ----------------------------------------------------------------------------- SPSA


class Quadratic(torch.nn.Module):
    """loss(w) = 0.5 * ||w - t||^2 per batch row."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, dim), requires_grad=False)
        self.register_buffer("t", torch.linspace(0.5, -0.25, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((self.w - self.t) ** 2).sum() * torch.ones_like(x[:, 0])


@pytest.mark.parametrize("kind", ["normal16", "rademacher"])
def test_spsa_estimate_matches_true_gradient(kind):
    dim, n, eps = 16, 3000, 1e-3
    model = Quadratic(dim)
    perturber = Perturber(model, ["w"], seed=7, kind=kind, eps=eps)
    from mezo_ckpt.core.stream import generate_z, param_key

    key = param_key(7, "w")
    acc = torch.zeros(dim, dtype=torch.float64)
    for step in range(n):
        losses = []
        for sign in (1, -1):
            with torch.inference_mode(), perturber.perturbed(step, 0, sign):
                losses.append(float(model(torch.zeros(1, 1))[0]))
        lp, lm = losses
        g = (lp - lm) / (2 * eps)
        acc += g * generate_z(key, step, 0, 0, dim, kind).double()
    estimate = acc / n
    true = (model.w - model.t).double()
    cos = torch.dot(estimate, true) / (estimate.norm() * true.norm())
    assert cos > 0.95
    # per-coordinate error ~ ||grad|| * sqrt(kurtosis-ish / n); generous 5 sigma bound
    assert (estimate - true).abs().max() < 5 * true.norm() * (3.0 / n) ** 0.5
    assert torch.equal(model.w, torch.linspace(-1, 1, dim))  # never modified


# ----------------------------------------------------------------------------- learning


def test_loss_decreases_on_learnable_task(bases, toy_data, tmp_path):
    r = train(
        config(
            bases[("llama", "float32")],
            toy_data,
            tmp_path / "t.zst",
            steps=60,
            batch_size=16,
            eval_every=60,
            eval_examples=64,
        ),
        progress=False,
        log=lambda s: None,
    )
    first, last = r.metric("dev", 0, "loss"), r.metric("dev", 60, "loss")
    assert last < first - 0.02, (first, last)


def test_n_spsa_stochastic_rounding_rademacher_replay(bases, toy_data, tmp_path):
    base = bases[("llama", "bfloat16")]
    r = train(
        config(
            base,
            toy_data,
            tmp_path / "t.zst",
            dtype="bfloat16",
            n_directions=2,
            rounding="stochastic",
            z="rademacher",
            schedule="cosine",
            warmup_steps=2,
            weight_decay=0.01,
        ),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    traj = read_trajectory(tmp_path / "t.zst")
    assert traj.records.coefs.shape == (6, 2)
    model = load_base(base, dtype="bfloat16").model
    assert replay_model(traj, model).verified
    assert_same(state(r.model), state(model))


def test_multitoken_verbalizer_and_multiple_choice(bases, tmp_path):
    rows = [
        {"q": f"{a}+{b}", "options": [str(a + b), str(a + b + 1), str(a - b)], "answer": 0}
        for a in range(10)
        for b in range(5)
    ]
    train_file = write_jsonl(tmp_path / "mc.jsonl", rows)
    r = train(
        TrainConfig(
            model=bases[("llama", "float32")],
            task="custom",
            train_file=train_file,
            dev_file=train_file,
            template="{q}=",
            options_field="options",
            label_field="answer",
            steps=3,
            batch_size=4,
            eval_every=0,
            eval_examples=8,
            eval_test=False,
            fsync=False,
            output=str(tmp_path / "mc.zst"),
        ),
        progress=False,
        log=lambda s: None,
    )
    assert r.steps == 3 and r.metric("dev", 0) is not None
    data = write_jsonl(tmp_path / "w.jsonl", toy_sentiment(40))
    r = train(
        config(
            bases[("llama", "float32")],
            {"train_file": data, "dev_file": data},
            tmp_path / "w.zst",
            verbalizer={"pos": " good", "neg": " bad"},
            steps=2,
        ),
        progress=False,
        log=lambda s: None,
    )
    assert r.steps == 2


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_give_typed_errors(bases, toy_data, tmp_path):
    base = bases[("llama", "float32")]
    with pytest.raises(DataError, match="not found"):
        train(config(base, {"train_file": str(tmp_path / "nope.jsonl")}, tmp_path / "x.zst"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "pos"}\nnot json\n')
    with pytest.raises(DataError, match=":2: not valid JSON"):
        train(config(base, {"train_file": str(bad)}, tmp_path / "x.zst"))
    missing = write_jsonl(tmp_path / "m.jsonl", [{"sentence": "a", "label": "pos"}])
    with pytest.raises(DataError, match="lacks field"):
        train(config(base, {"train_file": missing}, tmp_path / "x.zst"))
    other = write_jsonl(tmp_path / "o.jsonl", [{"text": "a", "label": "maybe"}])
    with pytest.raises(
        DataError, match=r"o.jsonl:1: label .maybe. is not mapped by the verbalizer"
    ):
        train(config(base, {"train_file": other}, tmp_path / "x.zst"))
    with pytest.raises(ConfigError, match="tokenize identically"):
        train(config(base, toy_data, tmp_path / "x.zst", verbalizer={"pos": "+", "neg": "+"}))
    with pytest.raises(ConfigError, match="empty"):
        train(config(base, toy_data, tmp_path / "x.zst", verbalizer={"pos": "", "neg": "-"}))
    with pytest.raises(ModelLoadError):
        train(config(str(tmp_path / "no-such-model"), toy_data, tmp_path / "x.zst"))
    with pytest.raises(ConfigError, match="matches no parameter"):
        train(config(base, toy_data, tmp_path / "x.zst", trainable=["nothing.*"]))
    assert not (tmp_path / "x.zst").exists()


def test_tiny_model_factory_is_portable():
    a = canonical_parameters(tiny_model("llama"))
    b = canonical_parameters(tiny_model("llama"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.real_model
def test_real_default_model_few_steps_replay_exact(tmp_path):
    """A few steps of the embedded default (SmolLM2-135M, built-in sentiment task), then
    replay from the file equals the trained weights."""
    r = train(
        TrainConfig(
            steps=2,
            eval_every=0,
            eval_examples=16,
            eval_test=False,
            fsync=False,
            output=str(tmp_path / "real.zst"),
        ),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    traj = read_trajectory(tmp_path / "real.zst")
    assert traj.complete and traj.header.base.kind == "embedded"
    model = load_base(None).model
    assert replay_model(traj, model).verified
    assert_same(state(r.model), state(model))
