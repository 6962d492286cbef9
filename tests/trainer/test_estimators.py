"""Estimators beyond two-point SPSA (one-sided, FZOO-style) and momentum windows.

Every estimator's update is a combination of stored-seed directions with stored 13-bit
coefficients, so replay needs no state: these tests hold each one to replay == trained
(torch.equal), lr=0 identity and resume == straight run, check the coefficients against
the formulas, the history records' format rules, and the history terms of the update
rule against the independent NumPy implementation of docs/FORMAT.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_numpy import _bits, _to_np32, np_apply, np_key
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.core import update as U
from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import ConfigError, HeaderError, RecordError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trainer import TrainConfig, train
from mezo_ckpt.trainer.step import MezoStep
from mezo_ckpt.trainer.tasks import LossTerms
from mezo_ckpt.trajectory import (
    StepRecords,
    decode_records,
    encode_records,
    read_trajectory,
    record_size,
)
from mezo_ckpt.trajectory.header import HISTORY_FEATURE, Header

ESTIMATORS = [
    ("spsa", 1, 0.0),
    ("spsa", 1, 0.9),
    ("one-sided", 2, 0.0),
    ("fzoo", 4, 0.0),
    ("fzoo", 4, 0.8),
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("est")
    out = {}
    for dt in ("float32", "bfloat16"):
        save_tiny(root / dt, "llama", dtype=getattr(torch, dt))
        out[dt] = str(root / dt)
    return out


DATA = {"train": toy_sentiment(64, 0), "dev": toy_sentiment(16, 1)}


def run(base, out, **kw):
    settings = dict(
        model=base,
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        steps=6,
        batch_size=8,
        lr=3e-3,
        eps=1e-2,
        eval_every=3,
        eval_examples=8,
        eval_test=False,
        fsync=False,
        output=str(out),
    )
    settings.update(kw)
    return train(data=DATA, progress=False, log=lambda s: None, keep_model=True, **settings)


def state(model):
    return {k: v.detach().clone() for k, v in canonical_parameters(model).items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- promises


@pytest.mark.parametrize("estimator,n,beta", ESTIMATORS)
@pytest.mark.parametrize("dtype,rounding", [("float32", "nearest"), ("bfloat16", "stochastic")])
def test_replay_equals_training_for_every_estimator(
    bases, tmp_path, estimator, n, beta, dtype, rounding
):
    settings = dict(
        estimator=estimator,
        n_directions=n,
        momentum=beta,
        momentum_window=3,
        dtype=dtype,
        rounding=rounding,
    )
    lr = 3e-3 if estimator != "fzoo" else 1e-3
    r = run(bases[dtype], tmp_path / "t.zst", lr=lr, **settings)
    traj = read_trajectory(tmp_path / "t.zst")
    h = traj.header
    assert h.optimizer.extra["estimator"] == estimator
    assert h.records.history == (3 if beta else 0)
    assert (HISTORY_FEATURE in h.requires) == bool(beta)
    if beta:
        assert traj.records.history.shape == (6, 3, n)
        assert np.any(traj.records.history != 0)
    for step in (3, 6):
        model = load_base(bases[dtype], dtype=dtype).model
        assert replay_model(traj, model, step=step).verified
    assert_same(state(r.model), state(model))
    before = state(load_base(bases[dtype], dtype=dtype).model)
    assert any(not torch.equal(before[k], v) for k, v in state(r.model).items())
    zero = run(bases[dtype], tmp_path / "z.zst", lr=0.0, **settings)
    assert_same(before, state(zero.model))


def test_momentum_resume_after_a_crash_equals_the_straight_run(bases, tmp_path, monkeypatch):
    kw = dict(momentum=0.9, momentum_window=4, steps=9, estimator="fzoo", n_directions=3)
    straight = run(bases["float32"], tmp_path / "a.zst", **kw)
    real = TrainConfig.lr_at

    def dying(self, step):
        if step == 6:
            raise RuntimeError("simulated crash")
        return real(self, step)

    monkeypatch.setattr(TrainConfig, "lr_at", dying)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(bases["float32"], tmp_path / "b.zst", **kw)
    monkeypatch.setattr(TrainConfig, "lr_at", real)
    resumed = train(
        resume=tmp_path / "b.zst",
        model=bases["float32"],
        data=DATA,
        progress=False,
        log=lambda s: None,
        keep_model=True,
    )
    assert_same(state(straight.model), state(resumed.model))
    a, b = read_trajectory(tmp_path / "a.zst"), read_trajectory(tmp_path / "b.zst")
    assert np.array_equal(a.records.history, b.records.history)
    assert np.array_equal(a.records.coefs, b.records.coefs)


def test_bad_estimator_settings_are_config_errors(bases, tmp_path):
    with pytest.raises(ConfigError, match="n-directions 2"):
        run(bases["float32"], tmp_path / "x.zst", estimator="fzoo")
    with pytest.raises(ConfigError, match="momentum"):
        run(bases["float32"], tmp_path / "x.zst", momentum=1.0)
    with pytest.raises(ConfigError, match="momentum_window"):
        run(bases["float32"], tmp_path / "x.zst", momentum=0.5, momentum_window=65)


# ----------------------------------------------------------------------------- formulas


class FakeMeasure:
    """Losses by (lane, sign) of the active perturbation; 1.0 unperturbed."""

    def __init__(self, perturber, losses):
        self.perturber, self.losses = perturber, losses

    def __call__(self, enc):
        st = self.perturber._state
        key = None if st is None else st.lane
        return LossTerms(self.losses[key], 1, 0.0)


class FakePerturber:
    def __init__(self):
        self._state = None

    def perturbed(self, step, lane, sign):
        outer = self

        class Ctx:
            def __enter__(self):
                outer._state = type("S", (), {"lane": lane})()

            def __exit__(self, *a):
                outer._state = None

        return Ctx()


def _stepper(estimator, n, losses, **kw):
    pert = FakePerturber()
    spec = U.UpdateSpec(0, "normal16", "nearest", ("w",), frozenset())
    params = {"w": torch.zeros(16)}
    return MezoStep(
        params,
        pert,
        spec,
        FakeMeasure(pert, losses),
        eps=1e-2,
        n_directions=n,
        estimator=estimator,
        **kw,
    )


def test_fzoo_coefficients_are_the_normalised_one_sided_step():
    losses = {None: 1.0, 0: 1.2, 1: 0.9, 2: 1.05}
    st = _stepper("fzoo", 3, losses)
    est = st.estimate(0, None, 0.1)
    pert = [1.2, 0.9, 1.05]
    mean = sum(pert) / 3
    sigma = math.sqrt(sum((v - mean) ** 2 for v in pert) / 3)
    want = [U.round_coefficient(0.1 * (v - 1.0) / sigma / 3) for v in pert]
    assert est.coefs == want and est.forwards == 4
    assert est.pair_losses == [(v, 1.0) for v in pert]
    # no spread: no information, nothing applied (not a skipped step)
    flat = _stepper("fzoo", 2, {None: 1.0, 0: 1.5, 1: 1.5}).estimate(0, None, 0.1)
    assert flat.coefs == [0.0, 0.0] and not flat.skipped


def test_momentum_history_is_beta_powers_of_stored_coefficients():
    losses = {None: 1.0, 0: 1.3, 1: 0.8}
    st = _stepper("one-sided", 2, losses, momentum=0.9, window=3)
    ests = []
    for step in range(5):
        e = st.estimate(step, None, 0.01)
        st.apply(e)
        ests.append(e)
    assert ests[0].history == [[0.0, 0.0]] * 3  # nothing before step 0
    beta = [0.9, 0.9 * 0.9, 0.9 * 0.9 * 0.9]
    for t in range(1, 5):
        for k in range(1, 4):
            past = ests[t - k].coefs if t - k >= 0 else [0.0, 0.0]
            assert ests[t].history[k - 1] == [U.round_coefficient(beta[k - 1] * c) for c in past]
    # remember() rebuilds the same history from records (resume)
    rec = StepRecords.join([e.record(with_losses=False) for e in ests[:4]])
    fresh = _stepper("one-sided", 2, losses, momentum=0.9, window=3)
    fresh.remember(rec)
    assert fresh.estimate(4, None, 0.01).history == ests[4].history


# ----------------------------------------------------------------------------- update rule


@pytest.mark.parametrize(
    "dtype,rounding", [("float32", "nearest"), ("bfloat16", "nearest"), ("float16", "stochastic")]
)
@pytest.mark.parametrize("kind", ["normal16", "rademacher"])
def test_history_terms_match_the_numpy_reference_on_every_backend(dtype, rounding, kind):
    rng = np.random.default_rng(3)
    steps = np.array([0, 1, 2, 4, 5], np.int64)  # step 3 skipped
    coefs = np.array(
        [[U.round_coefficient(v) for v in row] for row in rng.normal(0, 1e-3, (5, 2))],
        np.float32,
    )
    hist = np.array(
        [[U.round_coefficient(v) for v in row.ravel()] for row in rng.normal(0, 1e-3, (5, 6))],
        np.float32,
    ).reshape(5, 3, 2)
    hist[0] = 0.0  # nothing before step 0
    hist[1, 1:] = 0.0
    hist[2, 2] = 0.0
    decay = np.array([1, 0.999, 1, 1, 0.99], np.float32)
    batch = U.UpdateBatch(steps, coefs, decay, hist)
    key = np_key(5, "w")
    base = torch.linspace(-2, 2, 3000).to(getattr(torch, dtype))
    outs = {}
    for backend in ("auto", "reference"):
        t = base.clone()
        U.apply_updates(t, key, batch, kind=kind, rounding=rounding, start=7, backend=backend)
        outs[backend] = t
    np.testing.assert_array_equal(_bits(outs["auto"]), _bits(outs["reference"]))
    want = np_apply(_to_np32(base), dtype, key, steps, coefs, decay, kind, rounding, 7, hist)
    np.testing.assert_array_equal(_bits(outs["reference"].float()), _bits(want))
    plain = base.clone()
    U.apply_updates(plain, key, U.UpdateBatch(steps, coefs, decay), kind=kind, rounding=rounding)
    assert not torch.equal(plain, outs["auto"])  # the history terms did something


def test_zero_history_changes_nothing():
    steps = np.arange(4, dtype=np.int64)
    coefs = np.full((4, 1), 2.0**-10, np.float32)
    decay = np.ones(4, np.float32)
    a, b = torch.linspace(-1, 1, 500), torch.linspace(-1, 1, 500)
    key = np_key(1, "w")
    U.apply_updates(a, key, U.UpdateBatch(steps, coefs, decay), kind="normal16")
    hist = np.zeros((4, 5, 1), np.float32)
    U.apply_updates(b, key, U.UpdateBatch(steps, coefs, decay, hist), kind="normal16")
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- format


def _records(t=4, n=2, w=3, losses=True):
    rng = np.random.default_rng(0)
    c = np.array([U.round_coefficient(v) for v in rng.normal(0, 1e-3, t * n)], np.float32).reshape(
        t, n
    )
    h = np.array(
        [U.round_coefficient(v) for v in rng.normal(0, 1e-4, t * w * n)], np.float32
    ).reshape(t, w, n)
    for i in range(min(t, w)):
        h[i, i:] = 0.0  # record i may name steps i-1 .. 0 only
    ls = rng.random((t, n, 2)).astype(np.float32) if losses else None
    return StepRecords(np.zeros(t, np.uint8), c, np.ones(t, np.float32), ls, h)


def test_history_records_round_trip_and_their_size():
    rec = _records()
    data = encode_records(rec, decay=True)
    assert len(data) == 4 * record_size(2, decay=True, losses=True, history=3)
    assert record_size(2, decay=True, losses=True, history=3) == 1 + 6 + 18 + 4 + 16
    back = decode_records(data, 2, decay=True, losses=True, history=3)
    assert np.array_equal(back.history, rec.history) and np.array_equal(back.coefs, rec.coefs)
    assert back.update_batch().window == 3


def test_history_naming_a_step_before_zero_is_refused():
    rec = _records()
    rec.history[1, 2, 0] = 2.0**-10  # record 1, k=3: step -2
    with pytest.raises(RecordError, match="before step 0"):
        decode_records(encode_records(rec, decay=True), 2, decay=True, losses=True, history=3)
    # the same record later in the file names step 8 - 3 = 5: fine
    decode_records(
        encode_records(rec, decay=True), 2, decay=True, losses=True, history=3, first_step=7
    )


def test_invalid_history_coefficient_is_refused():
    rec = _records()
    data = bytearray(encode_records(rec, decay=True))
    rs = record_size(2, decay=True, losses=True, history=3)
    data[3 * rs + 7] = 0x01  # low byte of a history coefficient: >13 significant bits
    with pytest.raises(RecordError, match="history coefficient"):
        decode_records(bytes(data), 2, decay=True, losses=True, history=3)


def test_header_history_needs_its_feature(bases, tmp_path):
    run(bases["float32"], tmp_path / "m.zst", momentum=0.5, momentum_window=2, steps=2)
    obj = dict(read_trajectory(tmp_path / "m.zst").header.raw)
    assert obj["records"]["history"] == 2 and HISTORY_FEATURE in obj["requires"]
    Header.from_json(obj)
    with pytest.raises(HeaderError, match="history"):
        Header.from_json({**obj, "requires": [r for r in obj["requires"] if r != HISTORY_FEATURE]})
    with pytest.raises(HeaderError, match="history"):
        Header.from_json({**obj, "records": {**obj["records"], "history": 0}})
    with pytest.raises(HeaderError, match="history"):
        Header.from_json({**obj, "records": {**obj["records"], "history": 65}})


def test_plain_runs_keep_the_plain_layout(bases, tmp_path):
    run(bases["float32"], tmp_path / "p.zst", steps=2)
    h = read_trajectory(tmp_path / "p.zst").header
    assert "history" not in h.raw["records"] and HISTORY_FEATURE not in h.requires


def test_readers_without_the_history_feature_refuse_momentum_files(bases, tmp_path, monkeypatch):
    """A reader that does not know history-v1 must refuse the file (it would replay other
    weights), with UnsupportedError naming the feature."""
    from mezo_ckpt.errors import UnsupportedError
    from mezo_ckpt.trajectory import header as H

    run(bases["float32"], tmp_path / "m.zst", momentum=0.5, momentum_window=2, steps=2)
    monkeypatch.setattr(H, "KNOWN_FEATURES", H.KNOWN_FEATURES - {HISTORY_FEATURE})
    with pytest.raises(UnsupportedError, match=HISTORY_FEATURE):
        read_trajectory(tmp_path / "m.zst")
