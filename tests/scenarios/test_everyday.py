"""Everyday use, through the command line, the way a transformers/peft/torchtune user works.

Every test drives ``mezo-ckpt`` through ``click.testing.CliRunner`` (in process, so it is
fast and monkeypatchable) on tiny models saved with ``save_tiny``: config sources and
their error messages, parameter selection by the names people see, the export formats
loading where people load them, what a person sees while a run goes, the data formats
people have, generation tasks and user objectives, the Hub card, and the small things
(help text, signatures, the Python API).

Each bug these tests found was fixed in the package, and the test that found it stays
here so that it cannot come back.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner
from paths import ROOT
from tinymodels import save_tiny, tiny_model, tiny_tokenizer, toy_sentiment

from mezo_ckpt.cli import main
from mezo_ckpt.trajectory import read_trajectory

try:
    from helpers_train import write_jsonl
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.test_trainer import write_jsonl

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
#: Settings shared by the classification runs (tiny and fast; no fsync).
TASK = ["--template", "{text} =", "--verbalizer", "pos=+,neg=-"]
FAST = [
    "--batch-size",
    "4",
    "--eval-examples",
    "8",
    "--no-eval-test",
    "--eps",
    "1e-2",
    "--set",
    "fsync=false",
]
ATTN = re.compile(r"\.self_attn\.(q|k|v|o)_proj\.")


# ----------------------------------------------------------------------------- helpers


def cli(*args: object, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def ok(*args: object):
    r = cli(*args)
    assert r.exit_code == 0, r.output + (repr(r.exception) if r.exception else "")
    return r


def fails(*args: object):
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    return r


def header(path: Path):
    return read_trajectory(path).header


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a from_pretrained folder exactly as stored (dtype kept)."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def assert_equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def print_config(*args: object) -> dict:
    r = ok("train", *args, "--print-config")
    return yaml.safe_load(r.stdout)


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: carriage returns overwrite the line."""
    lines: list[list[str]] = [[]]
    col = 0
    for ch in raw:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return ["".join(x).rstrip() for x in lines]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny base folders: tied/untied Llama, tied GPT-2, bf16 Llama, Llama with a chat
    template; plus toy data files."""
    root = tmp_path_factory.mktemp("everyday")
    out = {}
    for name, arch, kw in (
        ("llama", "llama", {}),
        ("untied", "llama", {"tie": False}),
        ("gpt2", "gpt2", {}),
        ("bf16", "llama", {"dtype": torch.bfloat16}),
    ):
        save_tiny(root / name, arch, **kw)
        out[name] = root / name
    chat = root / "chat"
    save_tiny(chat, "llama")
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(chat)
    out["chat"] = chat
    out["train"] = Path(write_jsonl(root / "train.jsonl", toy_sentiment(48, 0)))
    out["dev"] = Path(write_jsonl(root / "dev.jsonl", toy_sentiment(16, 1)))
    qa = [{"question": f"{a}+{b}", "answer": str(a + b)} for a in range(6) for b in range(4)]
    out["qa"] = Path(write_jsonl(root / "qa.jsonl", qa))
    return out


def train_args(folders, model: str = "llama", *extra: object) -> list[object]:
    return [
        "train",
        "--model",
        folders[model],
        "--train-file",
        folders["train"],
        "--dev-file",
        folders["dev"],
        *TASK,
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory) -> dict[str, SimpleNamespace]:
    """Short runs shared by the export/diff/info tests, each with its trained weights
    (``--save-model``): 4 steps, evaluated (so fingerprinted) at steps 2 and 4."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, model, extra in (
        ("llama", "llama", []),
        ("llama_seed1", "llama", ["--seed", "1"]),
        ("untied", "untied", []),
        ("gpt2", "gpt2", []),
        ("bf16", "bf16", ["--dtype", "bf16"]),
    ):
        traj, saved = root / f"{name}.zst", root / f"{name}-trained"
        r = ok(
            *train_args(folders, model),
            *("--steps", "4", "--eval-every", "2", "--lr", "1e-2", "-q"),
            *("-o", traj, "--save-model", saved),
            *extra,
        )
        out[name] = SimpleNamespace(
            traj=traj, saved=saved, base=folders[model], output=r.output, root=root
        )
    return out


# ----------------------------------------------------------------------------- 1. config


def test_lr_from_flag_set_and_yaml_1_1_string(folders, tmp_path):
    common = ["--model", folders["llama"], "--train-file", folders["train"], *TASK]
    assert print_config(*common, "--lr", "5e-7")["lr"] == 5e-7
    assert print_config(*common, "--set", "lr=5e-7")["lr"] == 5e-7
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 1e-3\n")  # YAML 1.1 (PyYAML) reads this as the string '1e-3'
    assert yaml.safe_load(recipe.read_text())["lr"] == "1e-3"
    assert print_config("-c", recipe, *common)["lr"] == 1e-3
    # precedence: recipe < flag < --set
    assert print_config("-c", recipe, *common, "--lr", "2e-4")["lr"] == 2e-4
    assert print_config("-c", recipe, *common, "--lr", "2e-4", "--set", "lr=5e-7")["lr"] == 5e-7
    # and a real run records it
    out = tmp_path / "t.zst"
    ok(*train_args(folders), "--steps", "1", "--lr", "5e-7", "-q", "-o", out)
    assert header(out).optimizer.lr == 5e-7


@pytest.mark.parametrize("source", ["set", "yaml-string", "yaml-list"])
def test_trainable_glob_selects_only_attention(folders, tmp_path, source):
    recipe = tmp_path / "recipe.yaml"
    if source == "set":
        extra = ["--set", "trainable=*attn*"]
    else:
        recipe.write_text(
            'trainable: "*attn*"\n'
            if source == "yaml-string"
            else "trainable:\n" + "".join(f'  - "*self_attn.{p}_proj*"\n' for p in "qkvo")
        )
        extra = ["-c", recipe]
    out = tmp_path / "t.zst"
    ok(*train_args(folders), "--steps", "1", "-q", "-o", out, *extra)
    trainable = header(out).trainable
    expected = sorted(n for n, _ in tiny_model("llama").named_parameters() if ATTN.search(n))
    assert sorted(trainable) == expected and len(expected) == 8


@pytest.mark.parametrize("source", ["flag", "yaml"])
def test_dtype_bf16_from_cli_and_yaml(folders, tmp_path, source):
    out = tmp_path / "t.zst"
    if source == "flag":
        extra = ["--dtype", "bf16"]
    else:
        (tmp_path / "r.yaml").write_text("dtype: bf16\n")
        extra = ["-c", tmp_path / "r.yaml"]
    ok(*train_args(folders), "--steps", "1", "-q", "-o", out, *extra)
    assert header(out).base.dtype == "bfloat16"


def test_mistyped_setting_says_did_you_mean(folders, tmp_path):
    r = fails(*train_args(folders), "--set", "learning_rate=1e-5", "-o", tmp_path / "t.zst")
    assert "did you mean 'lr'" in r.output
    assert "--set learning_rate=1e-5" in r.output
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps: 3\nlearning_rate: 1e-5\n")
    r = fails("train", "-c", recipe, "--print-config")
    assert f"{recipe}:2" in r.output and "did you mean 'lr'" in r.output
    assert not (tmp_path / "t.zst").exists()


def test_bad_yaml_value_names_file_and_line(folders, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# my recipe\nlr: 1e-3\nbatch_size: lots\n")
    r = fails("train", "-c", recipe, "--print-config")
    assert f"{recipe}:3" in r.output and "batch_size" in r.output and "integer" in r.output
    recipe.write_text("lr: 1e-3\neps: tiny\n")
    r = fails("train", "-c", recipe, "--print-config")
    assert f"{recipe}:2" in r.output and "eps" in r.output


@pytest.mark.parametrize("text", ["1_000", "1e3", "1000.0"])
def test_integer_settings_accept_number_notations(folders, tmp_path, text):
    common = ["--model", folders["llama"], "--train-file", folders["train"], *TASK]
    assert print_config(*common, "--steps", text)["steps"] == 1000
    assert print_config(*common, "--set", f"eval_every={text}")["eval_every"] == 1000
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps: {text}\n")
    assert print_config("-c", recipe, *common)["steps"] == 1000
    r = fails("train", *common, "--steps", "1.5", "--print-config")
    assert "--steps" in r.output and "integer" in r.output


def test_print_config_round_trips_as_a_recipe(folders, tmp_path):
    args = ["--model", folders["llama"], "--train-file", folders["train"], *TASK]
    first = print_config(*args, "--lr", "1e-6", "--trainable", "*attn*,*mlp*", "--dtype", "bf16")
    assert first["lr"] == 1e-6 and first["dtype"] == "bfloat16"
    assert first["trainable"] == ["*attn*", "*mlp*"] and first["task"] == "custom"
    assert first["verbalizer"] == {"pos": "+", "neg": "-"}
    recipe = tmp_path / "resolved.yaml"
    recipe.write_text(ok("train", *args, "--lr", "1e-6", "--print-config").stdout)
    again = print_config("-c", recipe)
    assert again == print_config(*args, "--lr", "1e-6")


# ----------------------------------------------------------------------------- 2. params


def test_frozen_tied_embedding_by_its_alias(folders, tmp_path):
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    total = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    wte = model.transformer.wte.weight.numel()
    for alias in ("transformer.wte.weight", "lm_head.weight"):
        out = tmp_path / f"{alias}.zst"
        r = ok(*train_args(folders, "gpt2"), "--steps", "1", "-o", out, "--frozen", alias)
        trainable = header(out).trainable
        assert "lm_head.weight" not in trainable and "transformer.wte.weight" not in trainable
        assert len(trainable) == n_tensors - 1
        assert (
            f"trainable: {n_tensors - 1} of {n_tensors} tensors, "
            f"{total - wte:,} of {total:,} elements" in r.output
        )
    info = ok("info", out).output
    assert f"trainable   {n_tensors - 1} tensors, {total - wte:,} elements" in info


@pytest.mark.parametrize("flag", ["--trainable", "--frozen"])
def test_glob_matching_nothing_is_an_error(folders, tmp_path, flag):
    out = tmp_path / "t.zst"
    r = fails(*train_args(folders), "--steps", "1", "-o", out, flag, "*self_atn*")
    assert f"{flag} '*self_atn*' matches no parameter" in r.output
    assert "names look like" in r.output
    assert not list(tmp_path.iterdir())  # no output, journal or log left behind


def test_glob_typo_suggests_the_close_name(folders, tmp_path):
    r = fails(
        *train_args(folders), "--steps", "1", "-o", tmp_path / "t.zst", "--trainable", "*self_atn*"
    )
    assert "self_attn" in r.output


def test_trainable_counts_are_printed_even_with_q(folders, tmp_path):
    out = tmp_path / "t.zst"
    r = ok(*train_args(folders), "--steps", "1", "-q", "-o", out, "--trainable", "*mlp*")
    m = re.search(r"trainable: (\d+) of (\d+) tensors, ([\d,]+) of ([\d,]+) elements", r.output)
    assert m, r.output
    model = tiny_model("llama")
    mlp = [p for n, p in model.named_parameters() if ".mlp." in n]
    assert int(m.group(1)) == len(mlp) == len(header(out).trainable)
    assert int(m.group(3).replace(",", "")) == sum(p.numel() for p in mlp)
    assert f"trainable   {len(mlp)} tensors" in ok("info", out).output


# ----------------------------------------------------------------------------- 3. exports


@pytest.mark.parametrize("name", ["gpt2", "untied", "llama"])
def test_replay_safetensors_loads_strictly_into_a_fresh_model(runs, tmp_path, name):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    run = runs[name]
    f = tmp_path / "w.safetensors"
    ok("replay", run.traj, "--base", run.base, "--format", "safetensors", "-o", f, "-q")
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run.base))
    sd = load_file(str(f))
    assert sorted(sd) == sorted(fresh.state_dict())
    fresh.load_state_dict(sd)  # strict
    trained = tensors_of(run.saved)
    for k, v in fresh.state_dict().items():
        if k in trained:
            assert torch.equal(v, trained[k]), k
    if name != "untied":
        assert fresh.lm_head.weight.data_ptr() == fresh.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("name", ["llama", "bf16", "gpt2"])
def test_delta_then_apply_delta_is_bit_exact(runs, tmp_path, name):
    run = runs[name]
    delta = tmp_path / "d.safetensors"
    r = ok("replay", run.traj, "--base", run.base, "--format", "delta", "-o", delta, "-q")
    assert "delta" in r.output
    r = fails("apply-delta", delta, "-o", tmp_path / "nope")  # local base: must be named
    assert "--base" in r.output
    ok("apply-delta", delta, "--base", run.base, "-o", tmp_path / "tuned", "-q")
    got, want = tensors_of(tmp_path / "tuned"), tensors_of(run.saved)
    assert_equal_tensors(got, want)
    if name == "bf16":
        assert all(v.dtype == torch.bfloat16 for v in got.values())
    # and the patched folder is different from the base (the delta did something)
    base = tensors_of(run.base)
    assert any(not torch.equal(base[k], got[k]) for k in got)


def _norm(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> float:
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in keys))


def test_diff_between_two_steps_of_one_run(runs):
    run = runs["llama"]
    r = ok("diff", run.traj, "--base", run.base, "-q")
    lines = r.output.splitlines()
    assert lines[0].startswith(f"{run.traj}@0 -> {run.traj}@4: 20 tensors")
    assert any(re.match(r"model\.layers\.0\s+\S+\s+\S+\s+\S+$", ln) for ln in lines)
    assert any(re.match(r"model\.layers\.1\s+\S+\s+\S+\s+\S+$", ln) for ln in lines)
    d = json.loads(ok("diff", run.traj, "--base", run.base, "--json").stdout)
    assert {"model.layers.0", "model.layers.1"} <= set(d["layers"])
    for row in [d["total"], *d["layers"].values(), *d["tensors"].values()]:
        assert {"norm", "relative", "max_abs"} <= set(row)
    base, trained = tensors_of(run.base), tensors_of(run.saved)
    assert d["total"]["norm"] == pytest.approx(_norm(base, trained, trained), rel=1e-9)
    d24 = json.loads(ok("diff", run.traj, "--base", run.base, "--from", 2, "--json").stdout)
    assert d24["a"]["step"] == 2 and d24["b"]["step"] == 4
    assert 0 < d24["total"]["norm"] < d["total"]["norm"]


def test_diff_between_two_runs_on_the_same_base(runs):
    a, b = runs["llama"], runs["llama_seed1"]
    r = ok("diff", a.traj, b.traj, "--base", a.base, "-q")
    assert "model.layers.0" in r.output and "model.layers.1" in r.output
    d = json.loads(ok("diff", a.traj, b.traj, "--base", a.base, "--json").stdout)
    ta, tb = tensors_of(a.saved), tensors_of(b.saved)
    assert d["total"]["norm"] == pytest.approx(_norm(ta, tb, ta), rel=1e-9)
    assert d["total"]["max_abs"] == pytest.approx(
        max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)
    )


@pytest.mark.parametrize("other", ["gpt2", "untied", "bf16"])
def test_diff_refuses_runs_on_different_bases(runs, other):
    r = fails("diff", runs["llama"].traj, runs[other].traj, "--base", runs["llama"].base)
    assert "BaseMismatchError" in r.output and "same base" in r.output


# ------------------------------------------------------------------------- 4. what people see


def test_plain_progress_lines_when_not_a_terminal(folders, tmp_path):
    out = tmp_path / "t.zst"
    r = ok(*train_args(folders), "--steps", "4", "--eval-every", "2", "-o", out)
    lines = r.stdout.splitlines()
    progress = [ln for ln in lines if re.match(r"^step \d+/4 \(\d+%\) .* ETA \S+$", ln)]
    assert [ln.split()[1] for ln in progress] == ["1/4", "2/4", "3/4", "4/4"]
    evals = [ln for ln in lines if re.match(r"^step +\d+ +dev +accuracy", ln)]
    assert len(evals) == 3  # steps 0, 2, 4, each on a line of its own
    assert all("ETA" not in ln for ln in evals)
    assert "\r" not in r.stdout and "%|" not in r.stdout  # no bar in a log


def test_evaluation_lines_never_share_the_bar_line_on_a_terminal(tmp_path):
    from mezo_ckpt.trainer.report import Reporter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term, logged = Terminal(), []
    rep = Reporter(
        total=3,
        start=0,
        progress=True,
        log=logged.append,
        log_path=tmp_path / "log.jsonl",
        stream=term,
    )
    est = SimpleNamespace(loss=0.5, pair_losses=[(0.6, 0.4)], coefs=[1e-3], skipped=False)
    rep.step(0, est, 1e-3, 0.1)
    rep.evaluation(1, "dev", {"accuracy": 0.5, "loss": 0.7, "examples": 8.0})
    rep.step(1, est, 1e-3, 0.1)
    rep.message("Note: something")
    rep.close()
    shown = screen(term.getvalue())
    assert "step     1  dev  accuracy 0.5000  loss 0.7000" in shown
    assert "Note: something" in shown
    assert not logged  # on a terminal everything goes above the bar


def test_quiet_silences_progress_in_train_and_replay(folders, tmp_path):
    out = tmp_path / "t.zst"
    r = ok(*train_args(folders), "--steps", "4", "-q", "-o", out)
    assert "ETA" not in r.output and not re.search(r"step \d+/4", r.output)
    assert "Loading weights" not in r.output and "%|" not in r.output
    assert "Wrote" in r.output
    r = ok("replay", out, "--base", folders["llama"], "-o", tmp_path / "tuned", "-q")
    assert r.output.startswith("Replayed 4 steps") and "Wrote hf ->" in r.output
    assert "%|" not in r.output and "\r" not in r.output and "el-step" not in r.output
    r = ok("diff", out, "--base", folders["llama"], "-q")
    assert "%|" not in r.output and "\r" not in r.output


def test_summary_reports_seconds_per_step_apart_from_the_total(folders, tmp_path):
    out = tmp_path / "t.zst"
    r = ok(*train_args(folders), "--steps", "3", "-q", "-o", out)
    m = re.search(
        r"\((\S+) bytes, 3 steps\): (\d+\.\d+) s/step, (\d+) s training, (\d+) s in all", r.output
    )
    assert m, r.output
    per, training, total = float(m.group(2)), int(m.group(3)), int(m.group(4))
    assert per > 0 and training <= total


def test_seconds_per_step_excludes_evaluation_time(folders, tmp_path, monkeypatch):
    import time

    from mezo_ckpt.trainer import objectives

    real = objectives.Objective.evaluate

    def slow(self, split, batch_size, progress=None):
        time.sleep(1.0)
        return real(self, split, batch_size, progress)

    monkeypatch.setattr(objectives.Objective, "evaluate", slow)
    out = tmp_path / "t.zst"
    r = ok(*train_args(folders), "--steps", "2", "-o", out)
    steps = [
        json.loads(ln)
        for ln in Path(f"{out}.log.jsonl").read_text().splitlines()
        if '"step"' in ln and json.loads(ln)["event"] == "step"
    ]
    mean = sum(s["seconds"] for s in steps) / len(steps)
    per = float(re.search(r"(\d+\.\d+) s/step, ", r.output).group(1))
    assert per < mean + 0.25, (per, mean)
    first = re.search(r"step 1/2 \(50%\) .* (\d+\.\d+) s/step", r.output)
    assert float(first.group(1)) < mean + 0.25 + steps[0]["seconds"]


def test_report_to_tensorboard_writes_events(folders, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t.zst"
    ok(*train_args(folders), "--steps", "2", "-q", "-o", out, "--report-to", "tensorboard")
    events = list(tmp_path.glob("t.zst.tensorboard/events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/coef0", "dev/accuracy", "dev/loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    coefs = read_trajectory(out).records.coefs[:, 0]
    got = [e.value for e in acc.Scalars("train/coef0")]
    assert got == pytest.approx([float(c) for c in coefs], rel=1e-6)


def test_report_to_wandb_logs_every_step_and_evaluation(folders, tmp_path, monkeypatch):
    """wandb's own run object gets the config, a row per step and per evaluation, and is
    finished; the import happens only when asked for (a stand-in module records the calls)."""
    import types

    calls: list[tuple] = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, dict(values)))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw["project"], kw["name"], kw["config"]["steps"]))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    out = tmp_path / "w.zst"
    ok(
        *train_args(folders),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "-q",
        "-o",
        out,
        "--report-to",
        "wandb",
    )
    assert calls[0] == ("init", "mezo-ckpt", "w.zst", 2) and calls[-1] == ("finish",)
    logged = [c for c in calls if c[0] == "log"]
    steps = [c[1] for c in logged if "train/loss" in c[2]]
    assert steps == [1, 2]
    assert all({"train/lr", "train/coef0"} <= set(c[2]) for c in logged if "train/loss" in c[2])
    evals = sorted({c[1] for c in logged if "dev/accuracy" in c[2]})
    assert evals == [0, 1, 2]


def test_info_plot_writes_a_png(runs, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    r = ok("info", runs["llama"].traj, "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot        {png}" in r.output


def test_info_plot_draws_generation_metrics(folders, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    out = tmp_path / "qa.zst"
    ok(*qa_args(folders), "--steps", "2", "--eval-every", "1", "-q", "-o", out)
    figures = []
    real_close = plt.close

    def keep(fig=None):
        figures.append(fig)
        return real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    ok("info", out, "--plot", tmp_path / "c.png")
    assert figures and figures[0].axes[0].lines  # the evaluation panel has curves


# ----------------------------------------------------------------------------- 5. data


def test_csv_with_byte_order_mark_and_column_mapping(folders, tmp_path):
    csv = tmp_path / "excel.csv"
    rows = toy_sentiment(12)
    body = "review,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    csv.write_bytes(b"\xef\xbb\xbf" + body.encode())
    out = tmp_path / "t.zst"
    args = ["train", "--model", folders["llama"], "--train-file", csv, *TASK, *FAST]
    r = fails(*args, "--steps", "1", "-o", out)  # the template needs {text}
    assert "lacks field(s) ['text']" in r.output and "review" in r.output
    assert "\ufeff" not in r.output  # the byte-order mark is not part of a column name
    assert f"{csv}:2" in r.output
    ok(*args, "--steps", "1", "-q", "-o", out, "--columns", "text=review")
    assert header(out).config["data"]["train_examples"] == 12
    r = fails(*args, "--steps", "1", "-o", tmp_path / "u.zst", "--columns", "text=body")
    assert "no column 'body'" in r.output and f"{csv}:2" in r.output


def test_data_errors_name_file_and_line(folders, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad" "label": "neg"}\n')
    args = ["train", "--model", folders["llama"], *TASK, *FAST, "--steps", "1"]
    r = fails(*args, "--train-file", bad, "-o", tmp_path / "a.zst")
    assert f"{bad}:3: not valid JSON" in r.output
    csv = tmp_path / "bad.csv"
    csv.write_text("text,label\ngood good,pos\nbad bad,maybe\n")
    r = fails(*args, "--train-file", csv, "-o", tmp_path / "b.zst")
    assert f"{csv}:3: label 'maybe' is not mapped by the verbalizer" in r.output
    dev = tmp_path / "dev.jsonl"
    write_jsonl(dev, [{"text": "good", "label": "pos"}, {"sentence": "x", "label": "neg"}])
    r = fails(*args, "--train-file", folders["train"], "--dev-file", dev, "-o", tmp_path / "c.zst")
    assert f"{dev}:2: lacks field(s) ['text']" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "bad.jsonl", "dev.jsonl"]


def test_prompts_longer_than_max_length_are_reported(folders, tmp_path):
    r = ok(*train_args(folders), "--steps", "2", "--max-length", "10", "-o", tmp_path / "t.zst")
    assert "Note: 8 of 8 dev prompts are longer than --max-length 10 tokens" in r.output
    assert re.search(r"Note: \d+ of \d+ training prompts are longer than --max-length 10", r.output)


def test_training_truncation_note_counts_examples(folders, tmp_path):
    train = write_jsonl(tmp_path / "few.jsonl", toy_sentiment(4))
    r = ok(
        "train",
        "--model",
        folders["llama"],
        "--train-file",
        train,
        *TASK,
        *FAST,
        "--steps",
        "4",
        "--max-length",
        "10",
        "-o",
        tmp_path / "t.zst",
    )
    m = re.search(r"Note: (\d+)(?: of (\d+))? training prompts", r.output)
    assert m and int(m.group(1)) <= 4, r.output


def test_multi_token_label_word_gets_a_note(folders, tmp_path):
    r = ok(
        *train_args(folders),
        "--steps",
        "1",
        "-q",
        "-o",
        tmp_path / "t.zst",
        "--verbalizer",
        "pos= good,neg=-",
    )
    assert "Note: label word ' good' (pos) is 5 tokens" in r.output
    assert "label word '-'" not in r.output


def test_parquet_train_file(folders, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(toy_sentiment(16)), f)
    out = tmp_path / "t.zst"
    ok(
        "train",
        "--model",
        folders["llama"],
        "--train-file",
        f,
        *TASK,
        *FAST,
        "--steps",
        "1",
        "-q",
        "-o",
        out,
    )
    assert header(out).config["data"]["train_examples"] == 16


def test_dataset_saved_to_disk(folders, tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "my_dataset"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(toy_sentiment(16)),
            "validation": datasets.Dataset.from_list(toy_sentiment(8, 1)),
        }
    ).save_to_disk(str(d))
    out = tmp_path / "t.zst"
    r = ok(
        "train",
        "--model",
        folders["llama"],
        "--dataset",
        d,
        *TASK,
        *FAST,
        "--steps",
        "1",
        "-o",
        out,
    )
    assert "step     0  dev" in r.output
    cfg = header(out).config
    assert cfg["task"] == "custom" and cfg["data"]["train_examples"] == 16
    assert "dev_sha256" in cfg["data"]


def test_dataset_without_validation_split_trains(folders, tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "train_only"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(toy_sentiment(16))}).save_to_disk(
        str(d)
    )
    ok(
        "train",
        "--model",
        folders["llama"],
        "--dataset",
        d,
        *TASK,
        *FAST,
        "--steps",
        "1",
        "-q",
        "-o",
        tmp_path / "t.zst",
    )


def test_plain_dataset_is_not_evaluated_as_its_own_dev_split(folders, tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "plain"
    datasets.Dataset.from_list(toy_sentiment(16)).save_to_disk(str(d))
    out = tmp_path / "t.zst"
    r = cli(
        "train",
        "--model",
        folders["llama"],
        "--dataset",
        d,
        *TASK,
        *FAST,
        "--eval-examples",
        "100",
        "--steps",
        "1",
        "-q",
        "-o",
        out,
    )
    if r.exit_code == 0:  # acceptable: trains without a dev split
        data = header(out).config["data"]
        assert data.get("dev_sha256") != data["train_sha256"]
    else:  # also acceptable: a clear error about the missing split
        assert r.exit_code == 2 and "split" in r.output


def test_chat_template_changes_the_prompts(folders, tmp_path):
    args = ["train", "--model", folders["chat"], "--train-file", folders["train"]]
    args += ["--dev-file", folders["dev"], *TASK, *FAST, "--steps", "1", "-q"]
    plain = ok(*args, "-o", tmp_path / "a.zst").output
    chat = ok(*args, "-o", tmp_path / "b.zst", "--chat-template").output

    def loss(text: str) -> str:
        return re.search(r"step +0 +dev +accuracy \S+ +loss (\S+)", text).group(1)

    assert loss(plain) != loss(chat)
    assert header(tmp_path / "b.zst").config["resolved_task"]["chat_template"] is True
    assert header(tmp_path / "a.zst").config["resolved_task"]["chat_template"] is False


def test_chat_template_missing_leaves_nothing_behind(folders, tmp_path):
    out = tmp_path / "t.zst"
    r = fails(*train_args(folders), "--steps", "1", "-o", out, "--chat-template")
    assert "no chat template" in r.output
    assert not list(tmp_path.iterdir())


def test_missing_report_package_leaves_nothing_behind(folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "t.zst"
    r = fails(*train_args(folders), "--steps", "1", "-o", out, "--report-to", "tensorboard")
    assert "needs the tensorboard package" in r.output
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 6. generation


def qa_args(folders) -> list[object]:
    return [
        "train",
        "--model",
        folders["llama"],
        "--train-file",
        folders["qa"],
        "--dev-file",
        folders["qa"],
        "--target-field",
        "answer",
        "--template",
        "Q: {question} A:",
        "--max-new-tokens",
        "3",
        "--lr",
        "1e-2",
        *FAST,
    ]


def test_generation_task_trains_evaluates_and_replays_bit_exactly(folders, tmp_path):
    out, saved = tmp_path / "qa.zst", tmp_path / "trained"
    r = ok(*qa_args(folders), "--steps", "2", "-o", out, "--save-model", saved)
    assert re.search(r"step +0 +dev +exact_match \S+ +f1 \S+ +loss", r.output)
    assert re.search(r"dev f1: \S+ at step 0 -> \S+ at step 2", r.output)
    s = json.loads(ok("info", out, "--json").stdout)
    assert {"exact_match", "f1", "loss"} <= set(s["evaluations"][-1]["metrics"])
    assert s["config"]["resolved_task"]["kind"] == "generation"
    ok("replay", out, "--base", folders["llama"], "-o", tmp_path / "replayed", "-q")
    assert_equal_tensors(tensors_of(tmp_path / "replayed"), tensors_of(saved))
    assert any(
        not torch.equal(v, tensors_of(folders["llama"])[k]) for k, v in tensors_of(saved).items()
    )


def test_generation_run_has_a_best_step(folders, tmp_path):
    out = tmp_path / "qa.zst"
    ok(*qa_args(folders), "--steps", "2", "--eval-every", "1", "-q", "-o", out)
    ok("replay", out, "--base", folders["llama"], "--step", "best", "-o", tmp_path / "best", "-q")


def test_generation_objective_f1(folders, tmp_path):
    out = tmp_path / "f1.zst"
    ok(*qa_args(folders), "--steps", "2", "-q", "-o", out, "--objective", "f1")
    h = header(out)
    assert h.optimizer.objective == "f1" and h.config["objective"] == "f1"
    r = fails(*train_args(folders), "--steps", "1", "-o", tmp_path / "x.zst", "--objective", "f1")
    assert "--target-field" in r.output


def test_python_objective_records_function_and_source_hash(folders, tmp_path, monkeypatch):
    name = "everyday_objective_mod"
    src = (
        "CALLS = []\n\n\n"
        "def longest(examples, outputs):\n"
        "    CALLS.append(len(examples))\n"
        "    return [float(len(o)) for o in outputs]\n"
    )
    (tmp_path / f"{name}.py").write_text(src)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    out = tmp_path / "py.zst"
    ok(*qa_args(folders), "--steps", "2", "-q", "-o", out, "--objective", f"python:{name}:longest")
    h = header(out)
    assert h.config["objective_provenance"] == {
        "function": f"{name}.longest",
        "source_sha256": hashlib.sha256(src.encode()).hexdigest(),
    }
    assert h.optimizer.objective == f"python:{name}:longest"
    assert sys.modules[name].CALLS  # the function really scored the forwards
    r = fails(
        *qa_args(folders),
        "--steps",
        "1",
        "-o",
        tmp_path / "x.zst",
        "--objective",
        f"python:{name}:nope",
    )
    assert f"{name} has no function nope" in r.output
    monkeypatch.delitem(sys.modules, name, raising=False)


# ----------------------------------------------------------------------------- 7. hub card

BASE_REPO = "tester/tiny-base"
REPO = "tester/my-finetune"
WEIRD_TEMPLATE = "<b>{text}</b> | `x` [y](z) *w* ="


def _strip_fences(text: str) -> tuple[str, list[str]]:
    """(the card without its fenced code blocks, the fence lines)."""
    out, fences, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fences.append(line)
            inside = not inside
            continue
        if not inside:
            out.append(line)
    assert not inside, "unbalanced code fence"
    return "\n".join(out), fences


def test_push_dry_run_card(fake_hub, folders, tmp_path):
    from huggingface_hub import ModelCard

    base = folders["llama"]
    fake_hub.add_commit(BASE_REPO, {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()})
    out = tmp_path / "run.zst"
    ok(
        "train",
        "--model",
        base,
        "--train-file",
        folders["train"],
        "--dev-file",
        folders["dev"],
        "--template",
        WEIRD_TEMPLATE,
        "--verbalizer",
        "pos=+,neg=-",
        *FAST,
        "--steps",
        "2",
        "-q",
        "-o",
        out,
    )
    preview = tmp_path / "preview"
    r = ok(
        "push",
        out,
        REPO,
        "--base-repo",
        BASE_REPO,
        "--base-revision",
        "main",
        "--dataset",
        "stanfordnlp/sst2",
        "--dry-run",
        preview,
    )
    assert "nothing was uploaded" in r.output
    text = (preview / "README.md").read_text()
    card = ModelCard(text)
    meta = yaml.safe_load(text.split("---")[1])
    assert "pipeline_tag" not in meta and card.data.get("pipeline_tag") is None
    assert card.data.datasets == ["stanfordnlp/sst2"]
    assert card.data.eval_results
    assert {e.dataset_type for e in card.data.eval_results} == {"stanfordnlp/sst2"}
    # how to get the model
    assert "mezo-ckpt pull tester/my-finetune -o my-finetune" in text
    assert 'mezo_ckpt.load("tester/my-finetune")' in text
    # a python snippet with the task's template and label words
    assert "template = '<b>{text}</b> | \\x60x\\x60 [y](z) *w* ='" in text
    words = re.search(r"^label_words = (.*)$", text, re.M)
    assert words and json.loads(words.group(1)) == {"pos": "+", "neg": "-"}
    # strings from the header are escaped: outside code blocks no markup survives
    prose, fences = _strip_fences(text)
    assert set(fences) <= {"```", "```bash", "```python"}
    assert "<b>" not in prose and "`x`" not in prose and "[y](z)" not in prose
    assert "\\<b\\>" in prose  # shown, escaped, in the configuration table


def _preview(fake_hub, folders, tmp_path, *train_extra, dataset: str | None = None) -> str:
    """Train a short run from the llama folder, dry-run push it; the card's text."""
    base = folders["llama"]
    fake_hub.add_commit(BASE_REPO, {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()})
    out = tmp_path / "run.zst"
    ok(*train_extra, "--steps", "2", "-q", "-o", out)
    preview = tmp_path / "preview"
    extra = ["--dataset", dataset] if dataset else []
    r = ok(
        "push",
        out,
        REPO,
        "--base-repo",
        BASE_REPO,
        "--base-revision",
        "main",
        *extra,
        "--dry-run",
        preview,
    )
    assert "nothing was uploaded" in r.output
    return (preview / "README.md").read_text()


def test_card_of_a_generation_run_shows_its_metrics(fake_hub, folders, tmp_path):
    text = _preview(fake_hub, folders, tmp_path, *qa_args(folders))
    assert "def answer(example: dict" in text and "'Q: {question} A:'" in text
    table = text[text.index("## Evaluation") : text.index("## Training configuration")]
    assert "f1" in table and "exact_match" in table.replace("\\_", "_")


# ----------------------------------------------------------------------------- 8. small things


@pytest.mark.parametrize(
    "command", ["train", "replay", "info", "push", "pull", "diff", "apply-delta"]
)
def test_every_command_help_ends_with_examples(command):
    text = ok(command, "--help").output
    lines = text.rstrip().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip() == "Examples:")
    last_option = max(i for i, ln in enumerate(lines) if ln.lstrip().startswith("-h, --help"))
    assert at > last_option
    assert any(ln.strip().startswith("mezo-ckpt ") for ln in lines[at:])


def test_load_shows_its_real_signature_and_doc():
    import pydoc

    import mezo_ckpt

    params = inspect.signature(mezo_ckpt.load).parameters
    assert list(params)[:6] == ["repo_or_path", "step", "device", "dtype", "revision", "token"]
    doc = pydoc.render_doc(mezo_ckpt.load, renderer=pydoc.plaintext)
    assert "repo_or_path" in doc and "Load a fine-tune" in doc


def test_load_is_discoverable():
    import mezo_ckpt

    assert "load" in dir(mezo_ckpt)


def _api_kwargs(tmp_path: Path) -> dict:
    return dict(
        data={"train": toy_sentiment(16), "dev": toy_sentiment(8, 1)},
        output=str(tmp_path / "api.zst"),
        steps=3,
        batch_size=4,
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        eval_test=False,
        eval_examples=8,
        fsync=False,
        progress=False,
        log=lambda _m: None,
    )


def test_python_api_in_memory_rows_and_loaded_model(tmp_path):
    from mezo_ckpt.trainer import train

    model, tok = tiny_model("llama"), tiny_tokenizer()
    r = train(model=model, tokenizer=tok, task="custom", train_file=None, **_api_kwargs(tmp_path))
    assert r.steps == 3 and r.metric("dev", 3) is not None
    assert header(r.output).config["task"] == "custom"


def test_python_api_in_memory_rows_are_not_recorded_as_the_builtin_task(tmp_path):
    from mezo_ckpt.trainer import train

    model, tok = tiny_model("llama"), tiny_tokenizer()
    r = train(model=model, tokenizer=tok, **_api_kwargs(tmp_path))
    assert r.steps == 3  # this part works today
    assert header(r.output).config["task"] != "sentiment"


def test_extras_named_in_messages_exist():
    import tomllib

    pyproject = ROOT / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert {"data", "report", "plot"} <= set(extras)


def test_closed_pipe_is_not_an_error(runs, monkeypatch):
    import click

    real = click.echo

    def echo(message=None, *a, err=False, **kw):
        if not err:
            raise BrokenPipeError(32, "Broken pipe")
        return real(message, *a, err=err, **kw)

    monkeypatch.setattr(click, "echo", echo)
    r = cli("info", runs["llama"].traj)
    assert "BrokenPipeError" not in r.output and r.exit_code in (0, 141)
