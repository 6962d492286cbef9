"""Parameter-efficient MeZO (LoRA, prefix tuning): portable init, exact replay, PEFT export."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers_train import write_jsonl
from tinymodels import save_tiny, tiny_model, toy_sentiment

import mezo_ckpt
from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import UnsupportedError
from mezo_ckpt.models.adapters import adapter_config, adapter_names, attach, initial_values
from mezo_ckpt.trainer import train
from mezo_ckpt.trajectory import read_trajectory

peft = pytest.importorskip("peft")

ARCHS = ["gpt2", "llama", "opt"]
TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "opt": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    rows = toy_sentiment(64)
    write_jsonl(d / "train.jsonl", rows[:48])
    write_jsonl(d / "dev.jsonl", rows[48:])
    bases = {}
    for arch in ARCHS:
        save_tiny(d / arch, arch)
        bases[arch] = d / arch
    return d, bases


def run(data, arch: str, kind: str, out, **kw):
    d, bases = data
    settings = dict(
        model=str(bases[arch]),
        task="custom",
        train_file=str(d / "train.jsonl"),
        dev_file=str(d / "dev.jsonl"),
        template="{text} =",
        verbalizer={"pos": " p", "neg": " n"},
        steps=4,
        eval_every=2,
        batch_size=8,
        output=str(out),
        peft=kind,
        lr=1e-2,
        eps=1e-2,
        lora_r=2,
        lora_targets=TARGETS[arch],
        prefix_tokens=3,
        fsync=False,
    )
    settings.update(kw)
    return train(progress=False, keep_model=True, log=lambda s: None, **settings)


def adapter_state(model) -> dict[str, torch.Tensor]:
    params = canonical_parameters(model)
    return {n: params[n].detach().clone() for n in adapter_names(model)}


def base_state(model) -> dict[str, torch.Tensor]:
    params = canonical_parameters(model)
    own = set(adapter_names(model))
    return {n: p.detach().clone() for n, p in params.items() if n not in own}


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_init_is_portable_and_zero_b(kind):
    conf = (
        adapter_config("lora", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        if kind == "lora"
        else adapter_config("prefix", num_virtual_tokens=3)
    )
    torch.manual_seed(1)
    a = attach(tiny_model("llama"), kind, conf, seed=9)
    torch.manual_seed(2)  # torch's RNG does not matter
    b = attach(tiny_model("llama"), kind, conf, seed=9)
    sa, sb = adapter_state(a), adapter_state(b)
    assert sa and sa.keys() == sb.keys()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    c = attach(tiny_model("llama"), kind, conf, seed=10)  # another seed, other values
    assert not all(torch.equal(sa[n], adapter_state(c)[n]) for n in sa if ".lora_B." not in n)
    for n, t in sa.items():
        if ".lora_B." in n:
            assert not t.any()
        assert torch.equal(t, initial_values(n, t, 9))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_replay_equals_training_and_base_untouched(data, tmp_path, arch, kind):
    d, bases = data
    out = tmp_path / "run.zst"
    r = run(data, arch, kind, out)
    traj = read_trajectory(out)
    assert "peft-v1" in traj.header.requires and traj.header.peft.type == kind
    assert traj.header.trainable == tuple(adapter_names(r.model))
    before = base_state(attach(tiny_model(arch), kind, dict(traj.header.peft.config), 0))
    after = base_state(r.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the base never moves
    folder = tmp_path / "adapter"
    res = CliRunner().invoke(
        main,
        [
            "replay",
            str(out),
            "--base",
            str(bases[arch]),
            "--format",
            "peft",
            "-o",
            str(folder),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(bases[arch].resolve())
    from mezo_ckpt.models.base import load_folder

    loaded = peft.PeftModel.from_pretrained(load_folder(bases[arch], "float32"), str(folder))
    got, want = adapter_state(loaded), adapter_state(r.model)
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in got)
    ids = torch.randint(1, 90, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, r.model(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_lr_zero_leaves_base_and_adapter_at_init(data, tmp_path, arch, kind):
    r = run(data, arch, kind, tmp_path / "z.zst", lr=0.0, steps=3)
    traj = read_trajectory(tmp_path / "z.zst")
    fresh = attach(tiny_model(arch), kind, dict(traj.header.peft.config), traj.header.seed)
    a, b = adapter_state(r.model), adapter_state(fresh)
    assert all(torch.equal(a[n], b[n]) for n in a)
    x, y = base_state(r.model), base_state(fresh)
    assert all(torch.equal(x[n], y[n]) for n in x)


@pytest.mark.parametrize("arch, kind", [("llama", "lora"), ("gpt2", "prefix"), ("opt", "lora")])
def test_resume_equals_straight_run(data, tmp_path, monkeypatch, arch, kind):
    from mezo_ckpt.trainer.config import TrainConfig

    straight = run(data, arch, kind, tmp_path / "a.zst", steps=6)
    real = TrainConfig.lr_at

    def dying(self, step):
        if step == 4:
            raise RuntimeError("simulated crash")
        return real(self, step)

    monkeypatch.setattr(TrainConfig, "lr_at", dying)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(data, arch, kind, tmp_path / "b.zst", steps=6)
    monkeypatch.setattr(TrainConfig, "lr_at", real)
    d, bases = data
    resumed = train(
        resume=tmp_path / "b.zst",
        model=str(bases[arch]),
        train_file=str(d / "train.jsonl"),
        dev_file=str(d / "dev.jsonl"),
        progress=False,
        keep_model=True,
        log=lambda s: None,
    )
    a, b = adapter_state(straight.model), adapter_state(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_load_returns_peft_model_and_merge(data, tmp_path):
    d, bases = data
    out = tmp_path / "l.zst"
    r = run(data, "llama", "lora", out)
    model, _ = mezo_ckpt.load(out, base=str(bases["llama"]), progress=False)
    assert isinstance(model, peft.PeftModel)
    a, b = adapter_state(model), adapter_state(r.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    again, _ = mezo_ckpt.load(out, base=str(bases["llama"]), progress=False)  # cached adapter
    assert again.mezo_ckpt["cache_hit"] and isinstance(again, peft.PeftModel)
    merged, _ = mezo_ckpt.load(out, base=str(bases["llama"]), progress=False, merge=True)
    assert not isinstance(merged, peft.PeftModel)
    ids = torch.randint(1, 90, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, r.model(input_ids=ids).logits)


def test_old_readers_refuse_peft_files(data, tmp_path, monkeypatch):
    out = tmp_path / "o.zst"
    run(data, "gpt2", "lora", out, steps=2)
    from mezo_ckpt.trajectory import header as H

    monkeypatch.setattr(H, "KNOWN_FEATURES", frozenset())
    with pytest.raises(UnsupportedError, match="peft-v1"):
        read_trajectory(out)


def test_safetensors_and_delta_refused_for_adapters(data, tmp_path):
    d, bases = data
    out = tmp_path / "s.zst"
    run(data, "llama", "prefix", out, steps=2)
    for fmt in ("safetensors", "delta"):
        res = CliRunner().invoke(
            main, ["replay", str(out), "--base", str(bases["llama"]), "--format", fmt, "-q"]
        )
        assert res.exit_code == 2 and "--format peft" in res.output


def replay_cli(traj, base, fmt: str, folder):
    return CliRunner().invoke(
        main, ["replay", str(traj), "--base", str(base), "--format", fmt, "-o", str(folder)]
    )


def test_exported_adapter_loads_with_auto_peft_class(data, tmp_path):
    """`AutoPeftModelForCausalLM.from_pretrained(folder)` finds the base from the folder alone."""
    d, bases = data
    out = tmp_path / "a.zst"
    r = run(data, "llama", "lora", out, steps=2)
    folder = tmp_path / "adapter"
    res = replay_cli(out, bases["llama"], "peft", folder)
    assert res.exit_code == 0, res.output
    loaded = peft.AutoPeftModelForCausalLM.from_pretrained(str(folder))
    ids = torch.randint(1, 90, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, r.model(input_ids=ids).logits)


def test_lora_replay_hf_writes_merged_weights(data, tmp_path):
    d, bases = data
    out = tmp_path / "m.zst"
    r = run(data, "llama", "lora", out, steps=2)
    folder = tmp_path / "merged"
    res = replay_cli(out, bases["llama"], "hf", folder)
    assert res.exit_code == 0, res.output
    from mezo_ckpt.models.base import load_folder

    model = load_folder(folder, "float32")
    assert not any("lora" in n for n, _ in model.named_parameters())
    meta = json.loads((folder / "mezo_ckpt_provenance.json").read_text())
    assert "not bit-stable" in meta["merged"]
    ids = torch.randint(1, 90, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, r.model(input_ids=ids).logits)


def test_prefix_run_has_no_merged_form(data, tmp_path):
    """A prefix adapter is extra inputs, not a weight change: --format hf and merge=True are
    refused with a typed error before anything is written (they used to crash or be ignored)."""
    d, bases = data
    out = tmp_path / "p.zst"
    run(data, "llama", "prefix", out, steps=2)
    folder = tmp_path / "merged"
    res = replay_cli(out, bases["llama"], "hf", folder)
    assert res.exit_code == 2 and "no merged weights" in res.output
    assert "Traceback" not in res.output
    assert not folder.exists()
    from mezo_ckpt.errors import ConfigError

    with pytest.raises(ConfigError, match="no merged form"):
        mezo_ckpt.load(out, base=str(bases["llama"]), progress=False, merge=True)
    model, _ = mezo_ckpt.load(out, base=str(bases["llama"]), progress=False)
    assert isinstance(model, peft.PeftModel)
