"""mezo_ckpt.rebuild.inplace: replay into tensors or a model the caller holds (steps,
verification, refusals that leave the model untouched, progress), and catch_up, the
trainer's stop-at-every-fingerprint replay of a resumed run."""

from __future__ import annotations

import pytest
import torch
from helpers_train import assert_same, config, state, write_jsonl
from tinymodels import save_tiny, tiny_model, toy_sentiment

from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import BaseMismatchError, StepOutOfRangeError, VerificationError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild.inplace import catch_up, replay_model, replay_tensors
from mezo_ckpt.trainer import train
from mezo_ckpt.trajectory import read_trajectory


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step run on a tiny Llama (fingerprints at steps 2 and 3), the trained states
    at steps 2 and 3, and the base folder."""
    d = tmp_path_factory.mktemp("inplace")
    save_tiny(d / "base", "llama")
    data = {
        "train_file": write_jsonl(d / "train.jsonl", toy_sentiment(24, 0)),
        "dev_file": write_jsonl(d / "dev.jsonl", toy_sentiment(4, 1)),
    }
    kw = dict(eval_every=2, eval_examples=4, batch_size=4)
    two = train(
        config(str(d / "base"), data, d / "two.zst", steps=2, **kw),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    three = train(
        config(str(d / "base"), data, d / "t.zst", steps=3, **kw),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    traj = read_trajectory(d / "t.zst")
    assert sorted(traj.checkpoints) == [2, 3]
    return {
        "base": str(d / "base"),
        "traj": traj,
        "fingerprint": three.fingerprint,
        "at": {2: state(two.model), 3: state(three.model)},
    }


def base_model(run):
    return load_base(run["base"]).model


def test_replay_model_to_the_last_step_is_verified(run):
    model = base_model(run)
    report = replay_model(run["traj"], model)
    assert report.step == 3 and report.applied_steps == 3
    assert report.verified == "fingerprint" and report.fingerprint == run["fingerprint"]
    assert report.element_steps == 3 * sum(p.numel() for p in canonical_parameters(model).values())
    assert_same(state(model), run["at"][3])


def test_replay_model_to_a_checkpoint_and_between_checkpoints(run):
    model = base_model(run)
    report = replay_model(run["traj"], model, step=2)
    assert report.verified == "fingerprint"
    assert report.fingerprint == run["traj"].checkpoints[2]
    assert_same(state(model), run["at"][2])
    # step 1 has no fingerprint: the records are bound by the chain of checkpoint 2
    model = base_model(run)
    report = replay_model(run["traj"], model, step=1)
    assert (report.step, report.applied_steps) == (1, 1)
    assert report.verified == "records" and report.covered_by == 2 and report.fingerprint is None
    changed = state(model)
    assert any(not torch.equal(changed[k], run["at"][2][k]) for k in changed)


def test_step_zero_changes_nothing(run):
    model = base_model(run)
    before = state(model)
    report = replay_model(run["traj"], model, step=0)
    assert report.applied_steps == 0 and report.element_steps == 0
    assert_same(before, state(model))


def test_refusals_leave_the_model_untouched(run):
    model = base_model(run)
    before = state(model)
    with pytest.raises(StepOutOfRangeError, match=r"step 7 is outside the trajectory \(0\.\.3\)"):
        replay_model(run["traj"], model, step=7)
    assert_same(before, state(model))
    other = tiny_model("llama", seed=99)
    other_before = state(other)
    with pytest.raises(BaseMismatchError, match="not the one this trajectory was trained from"):
        replay_model(run["traj"], other)
    assert_same(other_before, state(other))


def test_without_the_base_check_a_wrong_base_fails_verification(run):
    other = tiny_model("llama", seed=99)
    with pytest.raises(VerificationError, match="replayed weights at step 3 have fingerprint"):
        replay_model(run["traj"], other, check_base=False)
    # verify=False: the same replay is accepted, unverified by a fingerprint
    other = tiny_model("llama", seed=99)
    report = replay_model(run["traj"], other, check_base=False, verify=False)
    assert report.step == 3 and report.fingerprint is None


def test_replay_tensors_in_place_with_progress(run):
    tensors = state(base_model(run))
    seen: list[int] = []
    report = replay_tensors(run["traj"], tensors, progress=seen.append)
    assert report.verified == "fingerprint" and report.fingerprint == run["fingerprint"]
    assert_same(tensors, run["at"][3])
    # the element-steps of each tensor (steps x elements), adding up to the report's
    sizes = sorted(3 * t.numel() for t in tensors.values())
    assert sorted(seen) == sizes and sum(seen) == report.element_steps
    # the dict's order does not matter
    tensors = dict(reversed(list(state(base_model(run)).items())))
    replay_tensors(run["traj"], tensors, step=2)
    assert_same(dict(sorted(tensors.items())), dict(sorted(run["at"][2].items())))


def test_catch_up_stops_at_checkpoints_and_asked_steps(run):
    tensors = state(base_model(run))
    stops: list[int] = []
    catch_up(run["traj"], tensors, 3, stops=[1, 5, -1], at_stop=stops.append)
    assert stops == [1, 2, 3]  # asked 1, checkpoint 2, the target 3; 5 and -1 are outside
    assert_same(tensors, run["at"][3])
    tensors = state(base_model(run))
    stops.clear()
    catch_up(run["traj"], tensors, 2, at_stop=stops.append)
    assert stops == [2]
    assert_same(tensors, run["at"][2])
    tensors = state(base_model(run))
    catch_up(run["traj"], tensors, 0)
    assert_same(tensors, state(base_model(run)))


def test_catch_up_refuses_weights_that_miss_a_fingerprint(run):
    tensors = state(base_model(run))
    tensors["model.norm.weight"] += 1.0
    stops: list[int] = []
    with pytest.raises(VerificationError, match="replayed weights at step 2 have fingerprint"):
        catch_up(run["traj"], tensors, 3, stops=[1], at_stop=stops.append)
    assert stops == [1]  # stopped at the first fingerprint, before step 3
