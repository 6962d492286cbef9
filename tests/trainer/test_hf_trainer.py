"""mezo_ckpt.MezoTrainer (mezo_ckpt/trainer/hf_trainer.py): transformers.Trainer with
MeZO steps; checkpoints are trajectories, resumed bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinymodels import tiny_model
from transformers import TrainingArguments

import mezo_ckpt
from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer.hf_trainer import MezoTrainer
from mezo_ckpt.trajectory import read_trajectory

pytestmark = pytest.mark.filterwarnings("ignore")


def dataset(n=64):
    ids = torch.randint(1, 90, (n, 12), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": r, "labels": r.clone()} for r in ids]


def args(out, **kw):
    base = dict(
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=1,
        save_steps=3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=7,
        disable_tqdm=True,
    )
    base.update(kw)
    return TrainingArguments(str(out), **base)


def run(out, *, resume=None, mezo=None, model=None, **kw):
    model = model if model is not None else tiny_model("gpt2")
    trainer = MezoTrainer(
        model=model,
        args=args(out, **kw),
        train_dataset=dataset(),
        eval_dataset=dataset(16),
        mezo=mezo or {"eps": 1e-3},
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_replay_equals_trained_and_a_checkpoint_resumes_bit_for_bit(tmp_path):
    model, trainer = run(
        tmp_path / "a", gradient_accumulation_steps=2, per_device_train_batch_size=4
    )
    out = tmp_path / "a" / "trajectory.zst"
    traj = read_trajectory(out)
    assert traj.complete and traj.num_steps == 6 and traj.records.coefs[0, 0] == 0.0  # warm-up 0
    rebuilt = mezo_ckpt.replay(out, tiny_model("gpt2"))
    assert rebuilt.mezo_ckpt["verified"] == "fingerprint" and same(rebuilt, model)
    ckpt = tmp_path / "a" / "checkpoint-3"
    files = sorted(p.name for p in ckpt.iterdir())
    assert "trajectory.zst" in files
    assert not [f for f in files if f.endswith((".safetensors", ".bin")) or "optimizer" in f]
    assert read_trajectory(ckpt / "trajectory.zst").num_steps == 3
    # resume from the checkpoint with a fresh (initial) model: the same run
    again, _ = run(
        tmp_path / "a",
        resume=str(ckpt),
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
    )
    assert same(again, model)
    assert read_trajectory(out).record_bytes == traj.record_bytes


def test_accumulation_of_two_micro_batches_matches_one_batch(tmp_path):
    run(tmp_path / "one", save_steps=100)
    run(tmp_path / "two", gradient_accumulation_steps=2, per_device_train_batch_size=4,
        save_steps=100)  # fmt: skip
    one = read_trajectory(tmp_path / "one" / "trajectory.zst").records
    two = read_trajectory(tmp_path / "two" / "trajectory.zst").records
    # the same losses up to float32 summation order ...
    np.testing.assert_allclose(one.losses, two.losses, rtol=4e-7)
    # ... so the same coefficients up to that roundoff through (L+ - L-) / (2 eps) * lr
    tol = 1e-3 * 8 * np.finfo(np.float32).eps * np.abs(one.losses).max() / (2 * 1e-3)
    np.testing.assert_allclose(one.coefs, two.coefs, rtol=0, atol=tol)
    assert np.count_nonzero(one.coefs) >= 5


def test_evaluations_are_recorded_with_fingerprints(tmp_path):
    run(tmp_path / "e", eval_strategy="steps", eval_steps=2, save_steps=100)
    traj = read_trajectory(tmp_path / "e" / "trajectory.zst")
    steps = sorted({e.step for e in traj.evaluations})
    assert steps == [2, 4, 6] and all(s in traj.checkpoints for s in steps)
    assert all("eval_loss" in e.metrics and e.split == "eval" for e in traj.evaluations)
    assert not any(k.endswith("_runtime") for e in traj.evaluations for k in e.metrics)


def test_settings_mezo_cannot_honour_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="step best"):
        MezoTrainer(
            model=tiny_model("gpt2"),
            args=args(tmp_path, load_best_model_at_end=True, eval_strategy="steps"),
            train_dataset=dataset(),
            eval_dataset=dataset(8),
        )
    with pytest.raises(ConfigError, match="TrainingArguments"):
        MezoTrainer(model=tiny_model("gpt2"), args=args(tmp_path), mezo={"lr": 1e-3})
    with pytest.raises(ConfigError, match="unknown setting"):
        run(tmp_path / "u", mezo={"epsilon": 1e-3})
    with pytest.raises(ConfigError, match="holds no trajectory"):
        (tmp_path / "ck").mkdir()
        (tmp_path / "ck" / "trainer_state.json").write_text("{}")
        run(tmp_path / "r", resume=str(tmp_path / "ck"))


def test_lr_zero_moves_nothing(tmp_path):
    model, _ = run(tmp_path / "z", learning_rate=0.0, save_steps=100)
    assert same(model, tiny_model("gpt2"))


def test_trl_sft_trainer_with_mezo_steps_replays_and_resumes(tmp_path):
    """MezoSFTTrainer: TRL's SFTTrainer (text dataset, its tokenization and label masks)
    with MeZO steps; the base is recorded as given (the Trainer aligns special tokens in
    the model's config), so replay onto a fresh model verifies."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from tinymodels import tiny_tokenizer
    from trl import SFTConfig

    texts = [{"text": f"review {i}: it was {'good' if i % 2 else 'bad'}."} for i in range(32)]

    def sft(resume=None):
        model = tiny_model("gpt2")
        cfg = SFTConfig(
            str(tmp_path), max_steps=4, per_device_train_batch_size=4,
            gradient_accumulation_steps=2, learning_rate=1e-3, save_steps=2, report_to=[],
            use_cpu=True, disable_tqdm=True, max_length=48, seed=3,
        )  # fmt: skip
        trainer = mezo_ckpt.MezoSFTTrainer(
            model=model, args=cfg, train_dataset=Dataset.from_list(texts),
            processing_class=tiny_tokenizer(), mezo={"eps": 1e-3},
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return model

    model = sft()
    out = tmp_path / "trajectory.zst"
    traj = read_trajectory(out)
    assert traj.num_steps == 4 and np.count_nonzero(traj.records.coefs) == 4
    rebuilt = mezo_ckpt.replay(out, tiny_model("gpt2"))
    assert rebuilt.mezo_ckpt["verified"] == "fingerprint" and same(rebuilt, model)
    again = sft(resume=str(tmp_path / "checkpoint-2"))
    assert same(again, model) and read_trajectory(out).record_bytes == traj.record_bytes


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path):
    """A wrong model, changed settings or a damaged checkpoint are refused before
    output_dir/trajectory.zst (or a live journal) is touched."""
    from mezo_ckpt.errors import BaseMismatchError, TrajectoryFormatError

    run(tmp_path / "a")
    out = tmp_path / "a" / "trajectory.zst"
    before = out.read_bytes()
    ckpt = tmp_path / "a" / "checkpoint-3"
    with pytest.raises(BaseMismatchError):
        run(tmp_path / "a", resume=str(ckpt), model=tiny_model("gpt2", seed=99))
    with pytest.raises(ConfigError, match="eps cannot change"):
        run(tmp_path / "a", resume=str(ckpt), mezo={"eps": 1e-2})
    data = bytearray((ckpt / "trajectory.zst").read_bytes())
    data[-20] ^= 0x40
    (ckpt / "trajectory.zst").write_bytes(bytes(data))
    with pytest.raises(TrajectoryFormatError):
        run(tmp_path / "a", resume=str(ckpt))
    assert out.read_bytes() == before
    assert not (tmp_path / "a" / "trajectory.zst.partial").exists()


def test_a_multi_process_launch_is_refused(tmp_path, monkeypatch):
    a = args(tmp_path)
    monkeypatch.setattr(type(a), "world_size", property(lambda self: 2))
    with pytest.raises(ConfigError, match="one process"):
        MezoTrainer(model=tiny_model("gpt2"), args=a, train_dataset=dataset())
