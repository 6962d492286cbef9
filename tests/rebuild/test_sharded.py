"""Streaming replay: one safetensors shard at a time, the same bits as a whole-model replay."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from helpers_train import write_jsonl
from safetensors.torch import load_file, save_file
from tinymodels import tiny_model, tiny_tokenizer, toy_sentiment
from transformers import AutoModelForCausalLM

from mezo_ckpt.cli import main
from mezo_ckpt.trainer import train


def sharded_base(folder, arch="llama", tie=True):
    m = tiny_model(arch, tie=tie)
    m.save_pretrained(folder, max_shard_size="20KB")  # many small shards
    tiny_tokenizer().save_pretrained(folder)
    return m


def test_streaming_replay_equals_whole_model_replay(tmp_path):
    base = tmp_path / "base"
    sharded_base(base)
    assert json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    rows = toy_sentiment(48)
    write_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "r.zst"
    train(
        model=str(base),
        task="custom",
        train_file=str(tmp_path / "t.jsonl"),
        template="{text} =",
        verbalizer={"pos": " p", "neg": " n"},
        steps=4,
        eval_every=2,
        output=str(out),
        fsync=False,
        progress=False,
        log=lambda s: None,
        trainable=["model.layers.0.*", "lm_head.weight"],
    )
    cli = CliRunner()
    for step in ("2", "4"):
        a, b = tmp_path / f"stream{step}", tmp_path / f"whole{step}"
        r = cli.invoke(
            main,
            [
                "replay",
                str(out),
                "--base",
                str(base),
                "--step",
                step,
                "-o",
                str(a),
                "--stream",
                "--json",
            ],
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["streamed"] and json.loads(r.stdout)["verified"]
        r = cli.invoke(
            main,
            [
                "replay",
                str(out),
                "--base",
                str(base),
                "--step",
                step,
                "-o",
                str(b),
                "--no-stream",
                "-q",
            ],
        )
        assert r.exit_code == 0, r.output
        sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
        sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert len(list(a.glob("model-*.safetensors"))) > 2  # the shards were kept


def short_run(tmp_path, **kw):
    """A 2-step run on a many-shard tiny Llama: (base folder, trajectory)."""
    base = tmp_path / "base"
    sharded_base(base)
    write_jsonl(tmp_path / "t.jsonl", toy_sentiment(32))
    out = tmp_path / "r.zst"
    train(
        model=str(base),
        task="custom",
        train_file=str(tmp_path / "t.jsonl"),
        template="{text} =",
        verbalizer={"pos": " p", "neg": " n"},
        steps=2,
        eval_every=0,
        output=str(out),
        fsync=False,
        progress=False,
        log=lambda s: None,
        **kw,
    )
    return base, out


def test_streaming_replay_refuses_a_wrong_base_and_writes_nothing(tmp_path):
    base, out = short_run(tmp_path, trainable=["model.layers.0.*"])
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    frozen = "model.layers.1.mlp.up_proj.weight"
    shard = base / index[frozen]
    tensors = load_file(str(shard))
    t = tensors[frozen].clone()
    t.view(-1)[0] = torch.nextafter(t.view(-1)[0], torch.tensor(1.0))  # one ulp, frozen
    tensors[frozen] = t
    save_file(tensors, str(shard), metadata={"format": "pt"})
    dest = tmp_path / "out"
    r = CliRunner().invoke(
        main, ["replay", str(out), "--base", str(base), "-o", str(dest), "--stream"]
    )
    assert r.exit_code == 2 and "BaseMismatchError" in r.output and frozen in r.output
    assert not dest.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_wrong_config_or_tokenizer_is_refused_before_any_replay_work(tmp_path, monkeypatch):
    """What needs no weight read (config, tokenizer, manifest) is checked before the pass."""
    import shutil

    from mezo_ckpt.rebuild import plan

    base, out = short_run(tmp_path)

    def no_work(*a, **k):
        raise AssertionError("replayed a tensor of a base that was already known to be wrong")

    monkeypatch.setattr(plan, "replay_tensor", no_work)
    edits = {
        "rms_norm_eps": (
            "config.json",
            lambda p: p.write_text(
                p.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05')
            ),
        ),
        "tokenizer.json": (
            "tokenizer.json",
            lambda p: p.write_text(p.read_text().replace("=", "~", 1)),
        ),
    }
    for what, (name, edit) in edits.items():
        wrong = tmp_path / f"wrong-{what}"
        shutil.copytree(base, wrong)
        before = (wrong / name).read_text()
        edit(wrong / name)
        assert (wrong / name).read_text() != before
        dest = tmp_path / f"out-{what}"
        r = CliRunner().invoke(
            main, ["replay", str(out), "--base", str(wrong), "-o", str(dest), "--stream"]
        )
        assert r.exit_code == 2 and "BaseMismatchError" in r.output, r.output
        assert what in r.output and not dest.exists()
