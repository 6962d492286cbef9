"""Trust boundaries, attacked from outside: every test here fails if a promise breaks.

* "Verified" covers the whole model: every tensor of the base (trained or frozen), its
  config and its tokenizer, and every record of the trajectory (format 1.1 chain).
* No command overwrites a user's file or folder without being asked, none writes over its
  own input, and two runs pointed at the same output cannot destroy each other.
* Nothing read from a trajectory makes the tool read, write or fetch a path or repo the
  user did not name.
* Failures are typed errors (one line, exit 2), never tracebacks; strings from a file are
  shown escaped on a terminal and in a model card.

The bases are tiny GPT-2 / Llama folders (tests/tinymodels.py) trained for a few steps
with ``--trainable`` a subset, so frozen tensors exist; wrong bases come from
tests/wrong_bases.py. Trajectory files are taken apart and rebuilt here with zstandard
and the chain rule of docs/FORMAT.md §7.3, independently of mezo_ckpt's writer.

Every bug these tests found was fixed in the package; the tests stay so it cannot return.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import zstandard
from click.testing import CliRunner
from paths import GOLDEN
from tinymodels import save_tiny, toy_sentiment
from wrong_bases import ARCH_KEYS, CASES, PICKLE_MARKER, make_wrong_base, reserialised_config

import mezo_ckpt
import mezo_ckpt.errors as errors
from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import canonical_parameters
from mezo_ckpt.errors import ChainMismatchError, RunLockedError
from mezo_ckpt.models.base import load_base
from mezo_ckpt.rebuild import replay_model
from mezo_ckpt.trainer import TrainConfig, train
from mezo_ckpt.trainer.recipe import MezoRecipe
from mezo_ckpt.trajectory import TrajectoryWriter, read_trajectory
from mezo_ckpt.trajectory.steps import best_step

ARCHS = ("gpt2", "llama")
TRAINABLE = {"gpt2": "transformer.h.1.*", "llama": "model.layers.1.*"}
FROZEN = {"gpt2": "transformer.h.0.mlp.c_fc.weight", "llama": "model.layers.0.mlp.up_proj.weight"}
STEPS = 6
KILLED_AT = 4  # the killed run's journal holds steps 0..3 (and the evaluation at 3)
COMMON: dict[str, Any] = dict(
    task="custom",
    template="{text} =",
    verbalizer={"pos": "+", "neg": "-"},
    batch_size=8,
    lr=3e-3,
    eps=1e-2,
    eval_every=3,
    eval_examples=16,
    eval_test=False,
    fsync=False,
)
_FLAGS = "--task custom --batch-size 8 --lr 0.003 --eps 0.01 --eval-every 3 --eval-examples 16"
#: The CLI flags of COMMON (fsync cannot be set from the command line: it stays on).
TRAIN_FLAGS = ["--template", "{text} =", "--verbalizer", "pos=+,neg=-", "--no-eval-test"]
TRAIN_FLAGS += _FLAGS.split()
PREAMBLE = 24
CHAIN_TAG = b"mezo-ckpt/chain/v1\x00"  # docs/FORMAT.md §7.3, restated on purpose
ESC = "\x1b]0;pwned\x07"


class Killed(BaseException):
    """A simulated SIGKILL inside the process (nothing after it runs but finally blocks)."""


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Run:
    arch: str
    base: Path
    traj: Path  # a finished 6-step run (evaluations at 0, 3, 6; checkpoints at 3, 6)
    state: dict[str, torch.Tensor]  # its final weights (canonical parameters)
    journal: bytes  # the journal of the same run killed before step KILLED_AT
    data: dict[str, str]

    def config(self, out: Path, **kw: Any) -> TrainConfig:
        settings = {
            **COMMON,
            "model": str(self.base),
            "steps": STEPS,
            "trainable": [TRAINABLE[self.arch]],
            "output": str(out),
            **self.data,
        }
        settings.update(kw)
        return TrainConfig(**settings)

    def paths(self, base: Path | None = None) -> list[object]:
        """The flags naming the run's model and data (what a resume must name again)."""
        tf, df = self.data["train_file"], self.data["dev_file"]
        return ["--model", base or self.base, "--train-file", tf, "--dev-file", df]

    def cli_args(self, out: Path, *extra: object, steps: int = STEPS) -> list[object]:
        """`mezo-ckpt train` flags giving the same config as :meth:`config`."""
        tr = ["--trainable", TRAINABLE[self.arch], "--steps", steps]
        return ["train", *self.paths(), *TRAIN_FLAGS, *tr, "-o", out, "-q", *extra]

    def resume_args(self, target: Path, *extra: object, base: Path | None = None) -> list:
        """`train --resume` naming again the paths the run used (as resume demands)."""
        return ["train", "--resume", target, *self.paths(base), "-q", *extra]


def quiet(_msg: str) -> None:
    pass


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in canonical_parameters(model).items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def replayed(run: Run, traj: Path, step: int | str | None = None) -> dict[str, torch.Tensor]:
    model = load_base(str(run.base)).model
    replay_model(read_trajectory(traj), model, step=step)
    return params_of(model)


def kill_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the trainer die (as if killed) when it reaches ``step``."""
    real = TrainConfig.lr_at

    def dying(self: TrainConfig, s: int) -> float:
        if s == step:
            raise Killed(f"killed at step {s}")
        return real(self, s)

    monkeypatch.setattr(TrainConfig, "lr_at", dying)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("trust-data")
    out = {}
    for name, rows in (("train_file", toy_sentiment(64, 0)), ("dev_file", toy_sentiment(16, 1))):
        p = d / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = str(p)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data: dict[str, str]) -> dict[str, Run]:
    """Per architecture: a base, a finished run, its weights, a killed run's journal; plus
    ``other``: the GPT-2 run again with another seed (a donor of foreign records)."""
    root = tmp_path_factory.mktemp("trust-runs")
    out: dict[str, Run] = {}
    for arch in ARCHS:
        base = root / f"{arch}-base"
        save_tiny(base, arch)
        run = Run(arch, base, root / f"{arch}.zst", {}, b"", data)
        r = train(run.config(run.traj), progress=False, keep_model=True, log=quiet)
        run.state = params_of(r.model)
        killed = root / f"{arch}-killed.zst"
        with pytest.MonkeyPatch.context() as mp:
            kill_at(mp, KILLED_AT)
            with pytest.raises(Killed):
                train(run.config(killed), progress=False, log=quiet)
        run.journal = killed.with_name(killed.name + ".partial").read_bytes()
        out[arch] = run
    g = out["gpt2"]
    other = Run("gpt2", g.base, root / "gpt2-seed1.zst", {}, b"", data)
    train(other.config(other.traj, seed=1), progress=False, log=quiet)
    out["other"] = other
    return out


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own replay cache, and no Hub access (the tests never need one)."""
    cache = tmp_path.with_name(tmp_path.name + "-cache")  # beside: listings stay exact
    monkeypatch.setenv("MEZO_CKPT_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# ----------------------------------------------------------------------------- helpers


def cli(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(res: Any, *names: str) -> None:
    """Exit code 2 with one of the typed errors named, never a traceback."""
    assert res.exit_code == 2, res.output
    assert any(f"Error ({n})" in res.output for n in names), res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def frame(content: bytes) -> bytes:
    """One zstd frame with content size and checksum (docs/FORMAT.md §3.2)."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(
        content
    )


def split_frames(data: bytes) -> list[bytes]:
    """The raw frames after the preamble, each exactly as stored."""
    out, pos = [], PREAMBLE
    while pos < len(data):
        d = zstandard.ZstdDecompressor().decompressobj()
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        assert end > pos
        out.append(data[pos:end])
        pos = end
    return out


def unframe(raw: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(raw)


def record_size(header: dict) -> int:
    n = header["perturbation"]["n_directions"]
    r = header["records"]
    return 1 + 3 * n + (4 if r["decay"] else 0) + (8 * n if r["losses"] else 0)


@dataclass
class Parts:
    """A trajectory taken apart: preamble, header bytes, records, other frame contents."""

    preamble: bytes
    header: bytes  # the JSON after the HEAD tag, exactly as stored
    records: bytes  # every record's bytes, in step order
    tail: list[bytes]  # EVAL / CKPT frame contents, in file order

    @property
    def header_obj(self) -> dict:
        return json.loads(self.header)

    @property
    def rs(self) -> int:
        return record_size(self.header_obj)

    def chain(self, step: int) -> str:
        h = hashlib.sha256(CHAIN_TAG + struct.pack("<Q", len(self.header)) + self.header)
        h.update(self.records[: step * self.rs])
        return h.hexdigest()

    def rechained(self) -> Parts:
        """Every EVAL / CKPT given the chain digest of its step (what a forger does)."""
        tail = []
        for c in self.tail:
            obj = json.loads(c[4:])
            if "chain_sha256" in obj:
                obj["chain_sha256"] = self.chain(obj["step"])
            tail.append(c[:4] + json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
        return Parts(self.preamble, self.header, self.records, tail)

    def step_frames(self) -> list[bytes]:
        """One STEP frame per record (the journal layout)."""
        rs = self.rs
        n = len(self.records) // rs
        return [
            frame(b"STEP" + struct.pack("<QI", t, 1) + self.records[t * rs : (t + 1) * rs])
            for t in range(n)
        ]

    def build(self, *, per_step: bool = False) -> bytes:
        rs = self.rs
        n = len(self.records) // rs
        steps = (
            self.step_frames()
            if per_step
            else ([frame(b"STEP" + struct.pack("<QI", 0, n) + self.records)] if n else [])
        )
        return b"".join(
            [self.preamble, frame(b"HEAD" + self.header), *steps, *(frame(c) for c in self.tail)]
        )


def take_apart(data: bytes) -> Parts:
    contents = [unframe(f) for f in split_frames(data)]
    assert contents[0][:4] == b"HEAD"
    records = b"".join(c[16:] for c in contents if c[:4] == b"STEP")
    tail = [c for c in contents[1:] if c[:4] != b"STEP"]
    return Parts(data[:PREAMBLE], contents[0][4:], records, tail)


def edit_header(data: bytes, edit: Callable[[dict], None], *, rechain: bool = True) -> bytes:
    parts = take_apart(data)
    h = parts.header_obj
    edit(h)
    parts.header = json.dumps(h, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return (parts.rechained() if rechain else parts).build()


def edit_tail(data: bytes, edit: Callable[[bytes, dict], dict | None]) -> bytes:
    """Edit EVAL/CKPT objects (``edit(tag, obj)`` returns the new object, None drops it)."""
    parts = take_apart(data)
    tail = []
    for c in parts.tail:
        obj = edit(c[:4], json.loads(c[4:]))
        if obj is not None:
            tail.append(c[:4] + json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
    parts.tail = tail
    return parts.build()


def hub_kind(h: dict) -> None:
    """Pretend the base was pinned on the Hub (so `push --dry-run` needs no --base-repo)."""
    h["base"].update(kind="hub", repo_id="tester/tiny-base", revision="a" * 40)


def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a command gets as far as loading a base model."""

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("the base was loaded: the output was not checked first")

    monkeypatch.setattr("mezo_ckpt.models.base.load_base", boom)


#: What the refusal of each wrong base must name (per architecture).
MENTIONS: dict[str, Callable[[str], list[str]]] = {
    "frozen_ulp": lambda a: [FROZEN[a]],
    "frozen_missing": lambda a: [FROZEN[a]],
    "config_epsilon": lambda a: [ARCH_KEYS[a][0]],
    "config_activation": lambda a: [ARCH_KEYS[a][1]],
    "generation_config_changed": lambda a: ["generation_config.json"],
    "tokenizer_swapped": lambda a: ["tokenizer.json"],
    "tokenizer_extra_file": lambda a: ["chat_template.jinja"],
    "tokenizer_template_subfolder": lambda a: ["additional_chat_templates"],
}


def error_types(case: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(errors, n) for n in CASES[case].errors)


def case_params() -> list[Any]:
    out = []
    for name in CASES:
        marks: list[Any] = []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


# ============================================================================ 1. wrong bases


@pytest.mark.parametrize("case", case_params())
@pytest.mark.parametrize("arch", ARCHS)
def test_replay_refuses_wrong_base(runs: dict[str, Run], tmp_path: Path, arch: str, case: str):
    run = runs[arch]
    before = run.traj.read_bytes()
    wrong = make_wrong_base(run.base, tmp_path / "base", case, arch, FROZEN[arch])
    out = tmp_path / "out"
    res = cli("replay", run.traj, "--base", wrong, "-o", out, "-q")
    refused(res, *CASES[case].errors)
    for what in MENTIONS.get(case, lambda a: [])(arch):
        assert what in res.output, what  # the message says what differs
    assert listing(tmp_path) == ["base"]  # no output, no temp folder, no unpickled marker
    assert run.traj.read_bytes() == before


@pytest.mark.parametrize("case", case_params())
def test_load_and_pull_refuse_wrong_base(
    runs: dict[str, Run], tmp_path: Path, _own_cache: Path, case: str
):
    run = runs["llama"]
    wrong = make_wrong_base(run.base, tmp_path / "base", case, "llama", FROZEN["llama"])
    with pytest.raises(error_types(case)):
        mezo_ckpt.load(run.traj, base=str(wrong), progress=False)
    out = tmp_path / "pulled"
    with pytest.raises(error_types(case)):
        mezo_ckpt.hub.pull(run.traj, out, base=str(wrong), progress=False)
    assert not out.exists() and not (tmp_path / PICKLE_MARKER).exists()
    assert not list(_own_cache.rglob("*.safetensors"))  # nothing entered the replay cache


@pytest.mark.parametrize("case", case_params())
def test_resume_refuses_wrong_base(runs: dict[str, Run], tmp_path: Path, case: str):
    """A killed run resumed against a wrong base: refused, the journal untouched."""
    run = runs["gpt2"]
    journal = tmp_path / "run.zst.partial"
    journal.write_bytes(run.journal)
    wrong = make_wrong_base(run.base, tmp_path / "base", case, "gpt2", FROZEN["gpt2"])
    res = cli(*run.resume_args(tmp_path / "run.zst", base=wrong))
    refused(res, *CASES[case].errors)
    assert journal.read_bytes() == run.journal
    assert listing(tmp_path) == ["base", "run.zst.partial"]


def test_refused_extension_leaves_no_journal(runs: dict[str, Run], tmp_path: Path):
    run = runs["gpt2"]
    traj = tmp_path / "run.zst"
    shutil.copy2(run.traj, traj)
    wrong = make_wrong_base(run.base, tmp_path / "base", "frozen_ulp", "gpt2", FROZEN["gpt2"])
    res = cli(*run.resume_args(traj, "--steps", 9, base=wrong))
    refused(res, "BaseMismatchError")
    assert traj.read_bytes() == run.traj.read_bytes()
    assert listing(tmp_path) == ["base", "run.zst"]


@pytest.mark.parametrize("arch", ARCHS)
def test_reserialised_config_still_matches(runs: dict[str, Run], tmp_path: Path, arch: str):
    run = runs[arch]
    same = reserialised_config(run.base, tmp_path / "base")
    assert (same / "config.json").read_bytes() != (run.base / "config.json").read_bytes()
    out = tmp_path / "out"
    res = cli("replay", run.traj, "--base", same, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    model = load_base(str(out)).model
    assert_same(run.state, params_of(model))


def test_ignore_base_mismatch_is_loud_and_recorded(
    runs: dict[str, Run], tmp_path: Path, _own_cache: Path
):
    run = runs["gpt2"]
    wrong = make_wrong_base(run.base, tmp_path / "base", "frozen_ulp", "gpt2", FROZEN["gpt2"])
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = cli("replay", run.traj, "--base", wrong, "-o", out, "-q", "--ignore-base-mismatch")
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.stderr and FROZEN["gpt2"] in res.stderr
    prov = json.loads((out / "mezo_ckpt_provenance.json").read_text())
    assert prov["base_mismatch"] and any(FROZEN["gpt2"] in d for d in prov["base_mismatch"])
    # the weights written are the wrong base's frozen tensor plus the replayed ones
    got = params_of(load_base(str(out)).model)
    assert not torch.equal(got[FROZEN["gpt2"]], run.state[FROZEN["gpt2"]])
    trained = [n for n in run.state if n.startswith("transformer.h.1.")]
    assert trained and all(torch.equal(got[n], run.state[n]) for n in trained)
    # pull insists on -o for such weights, and never caches them
    res = cli("pull", run.traj, "--base", wrong, "--ignore-base-mismatch", "-q")
    refused(res, "OutputError")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = cli(
            "pull", run.traj, "--base", wrong, "--ignore-base-mismatch", "-o", tmp_path / "p", "-q"
        )
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "p" / "mezo_ckpt_provenance.json").read_text())
    assert prov["base_mismatch"]
    assert not list(_own_cache.rglob("*.safetensors"))


# ============================================================================ 2. record binding


def test_files_rebuilt_by_these_helpers_are_valid(runs: dict[str, Run], tmp_path: Path):
    """Control for the tests below: taking a file apart and rebuilding it (one STEP frame or
    one per record, header re-serialised) gives a valid, complete file with the same
    digests, so each rejection below is caused by the one edit it makes."""
    data = runs["gpt2"].traj.read_bytes()
    for i, rebuilt in enumerate(
        [
            take_apart(data).build(),
            take_apart(data).build(per_step=True),
            edit_header(data, lambda h: None, rechain=False),
            take_apart(data).rechained().build(),
        ]
    ):
        p = tmp_path / f"{i}.zst"
        p.write_bytes(rebuilt)
        t = read_trajectory(p)
        assert t.complete and t.chains == read_trajectory(runs["gpt2"].traj).chains


def test_spliced_step_frame_from_another_run_is_detected(runs: dict[str, Run], tmp_path: Path):
    a, b = take_apart(runs["gpt2"].traj.read_bytes()), take_apart(runs["other"].traj.read_bytes())
    assert a.rs == b.rs
    ours, theirs = a.step_frames(), b.step_frames()
    assert unframe(ours[1]) != unframe(theirs[1])  # the donor's record really differs
    head = split_frames(a.build(per_step=True))[0]
    spliced = b"".join(
        [a.preamble, head, ours[0], theirs[1], *ours[2:], *(frame(c) for c in a.tail)]
    )
    path = tmp_path / "spliced.zst"
    path.write_bytes(spliced)
    with pytest.raises(ChainMismatchError):
        read_trajectory(path)
    refused(cli("info", path), "ChainMismatchError")
    refused(
        cli("replay", path, "--base", runs["gpt2"].base, "-o", tmp_path / "o"),
        "ChainMismatchError",
    )
    assert not (tmp_path / "o").exists()


def test_edited_seed_is_detected(runs: dict[str, Run], tmp_path: Path):
    def seed(h: dict) -> None:
        h["perturbation"]["seed"] += 1

    path = tmp_path / "seed.zst"
    path.write_bytes(edit_header(runs["gpt2"].traj.read_bytes(), seed, rechain=False))
    with pytest.raises(ChainMismatchError):
        read_trajectory(path)
    refused(
        cli("replay", path, "--base", runs["gpt2"].base, "-o", tmp_path / "o"),
        "ChainMismatchError",
    )
    assert listing(tmp_path) == ["seed.zst"]


def test_edited_coefficient_is_detected(runs: dict[str, Run], tmp_path: Path):
    parts = take_apart(runs["llama"].traj.read_bytes())
    rec = bytearray(parts.records)
    rec[2 * parts.rs + 3] ^= 0x80  # sign of step 2's coefficient: still a valid record
    parts.records = bytes(rec)
    path = tmp_path / "coef.zst"
    path.write_bytes(parts.build())
    with pytest.raises(ChainMismatchError):
        read_trajectory(path)
    refused(cli("info", path), "ChainMismatchError")


@pytest.mark.parametrize("keep", [-1, -2, -3], ids=["no-last-ckpt", "no-ckpts", "no-ckpt-no-eval"])
def test_file_cut_on_a_frame_boundary_is_reported_cut(
    runs: dict[str, Run], tmp_path: Path, keep: int
):
    """A compact file ends EVAL0 EVAL3 EVAL6 CKPT3 CKPT6: cut off its last frame(s)."""
    run = runs["gpt2"]
    data = run.traj.read_bytes()
    raw = split_frames(data)
    tags = [unframe(f)[:4] for f in raw]
    assert tags[-2:] == [b"CKPT", b"CKPT"] and tags[-3] == b"EVAL"
    path = tmp_path / "cut.zst"
    path.write_bytes(data[:PREAMBLE] + b"".join(raw[:keep]))
    last = {-1: 3, -2: None, -3: None}[keep]
    s = json.loads(cli("info", path, "--json").output)
    assert s["state"] == "cut" and s["complete"] is False and s["last_verified_step"] == last
    text = cli("info", path)
    assert text.exit_code == 0 and "CUT" in text.output and "complete" not in text.output
    assert ("none" if last is None else f"steps 0..{last}") in text.output
    out = tmp_path / "o"
    refused(cli("replay", path, "--base", run.base, "-o", out, "-q"), "UnverifiedStepError")
    assert not out.exists()
    if last is not None:
        res = cli("replay", path, "--base", run.base, "--step", last, "-o", out, "-q")
        assert res.exit_code == 0, res.output
        shutil.rmtree(out)
    res = cli("replay", path, "--base", run.base, "-o", out, "-q", "--allow-unverified")
    assert res.exit_code == 0, res.output
    assert_same(run.state, params_of(load_base(str(out)).model))
    refused(cli("push", path, "tester/x", "--dry-run", tmp_path / "d"), "PushRefusedError")


# ============================================================================ 3. replay cache


def _flip_tensor_bit(entry: Path) -> None:
    weights = entry / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01  # one bit of one tensor element
    weights.write_bytes(bytes(blob))


def _edit_cached_config(entry: Path) -> None:
    p = entry / "config.json"
    cfg = json.loads(p.read_text())
    cfg["rms_norm_eps"] = cfg["rms_norm_eps"] * 10
    p.write_text(json.dumps(cfg))


CACHE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "tensor-bit": _flip_tensor_bit,
    "config-edit": _edit_cached_config,
    "weights-removed": lambda e: (e / "model.safetensors").unlink(),
    "provenance-removed": lambda e: (e / "mezo_ckpt_provenance.json").unlink(),
}


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_damaged_cache_entry_is_rebuilt(
    runs: dict[str, Run], tmp_path: Path, _own_cache: Path, damage: str
):
    run = runs["llama"]
    model, _ = mezo_ckpt.load(run.traj, base=str(run.base), progress=False)
    assert model.mezo_ckpt["cache_hit"] is False
    entry = Path(model.mezo_ckpt["folder"])
    assert entry.parent.parent == _own_cache / "replayed" and entry.name == f"step-{STEPS}"
    hit, _ = mezo_ckpt.load(run.traj, base=str(run.base), progress=False)
    assert hit.mezo_ckpt["cache_hit"] is True
    assert_same(run.state, params_of(hit))
    CACHE_DAMAGE[damage](entry)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again, _ = mezo_ckpt.load(run.traj, base=str(run.base), progress=False)
    assert again.mezo_ckpt["cache_hit"] is False  # rebuilt, not a "verified" hit
    assert_same(run.state, params_of(again))
    assert again.config.rms_norm_eps == load_base(str(run.base)).model.config.rms_norm_eps
    final, _ = mezo_ckpt.load(run.traj, base=str(run.base), progress=False)
    assert final.mezo_ckpt["cache_hit"] is True  # the entry was repaired on disk
    assert_same(run.state, params_of(final))


def test_file_added_to_cache_entry_is_not_a_verified_hit(
    runs: dict[str, Run], tmp_path: Path, _own_cache: Path
):
    run = runs["llama"]
    model, tok = mezo_ckpt.load(run.traj, base=str(run.base), progress=False)
    entry = Path(model.mezo_ckpt["folder"])
    assert tok.chat_template is None
    (entry / "chat_template.jinja").write_text("{{ 'EVIL' }}")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again, tok2 = mezo_ckpt.load(run.traj, base=str(run.base), progress=False)
    assert not again.mezo_ckpt["cache_hit"] or tok2.chat_template is None


# ============================================================================ 4. no clobbering


SLOW_TRAIN = """
import os, sys, time
from mezo_ckpt.trainer.config import TrainConfig
_lr_at = TrainConfig.lr_at
def slow(self, step):
    time.sleep(float(os.environ["STEP_DELAY"]))
    return _lr_at(self, step)
TrainConfig.lr_at = slow
from mezo_ckpt.cli import main
main(prog_name="mezo-ckpt")
"""


def slow_train(args: list[object], delay: float, log: Path) -> subprocess.Popen:
    env = {**os.environ, "STEP_DELAY": str(delay), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, *map(str, args)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=str(log.parent),
    )


def wait_for_steps(journal: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the training process ended early"
        if journal.exists():
            with contextlib.suppress(errors.TrajectoryFormatError):
                got = read_trajectory(journal, allow_truncated_tail=True).num_steps
                if got >= n:
                    return got
        time.sleep(0.05)
    raise AssertionError(f"{journal} did not reach {n} steps")


def test_two_runs_at_one_output_cannot_both_write(runs: dict[str, Run], tmp_path: Path):
    run = runs["gpt2"]
    out = tmp_path / "same.zst"
    journal = out.with_name(out.name + ".partial")
    first = slow_train(run.cli_args(out), 0.3, tmp_path / "first.log")
    try:
        wait_for_steps(journal, 1, first)
        second = cli(*run.cli_args(out))
        refused(second, "RunLockedError", "OutputError")  # see the next test for which
        assert "lock" in second.output
        third = cli(*run.cli_args(out, "--overwrite"))  # asking to overwrite does not help
        refused(third, "RunLockedError", "OutputError")
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    traj = read_trajectory(out)
    assert traj.complete and traj.num_steps == STEPS and not journal.exists()
    assert traj.checkpoints == read_trajectory(run.traj).checkpoints


def test_the_journal_itself_is_locked_whatever_the_cache(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A second process with another cache folder (another user, a container) does not see
    the first one's run lock, but the journal's own lock stops it before it cuts a byte:
    neither --overwrite nor --resume touches the live journal."""
    run = runs["gpt2"]
    out = tmp_path / "same.zst"
    journal = out.with_name(out.name + ".partial")
    first = slow_train(run.cli_args(out), 0.3, tmp_path / "first.log")
    try:
        wait_for_steps(journal, 1, first)
        monkeypatch.setenv("MEZO_CKPT_CACHE", str(tmp_path / "other-cache"))
        for extra in (["--overwrite"], ["--resume", str(out)]):
            args = (
                run.cli_args(out, *extra)
                if extra[0] == "--overwrite"
                else ["train", *extra, *run.paths()]
            )
            before = journal.read_bytes()
            res = cli(*args)
            refused(res, "RunLockedError")
            assert "holds the file's lock" in res.output
            now = journal.read_bytes()
            assert now[: len(before)] == before  # still the live run's, only appended to
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    traj = read_trajectory(out)
    assert traj.complete and traj.checkpoints == read_trajectory(run.traj).checkpoints


def test_a_held_journal_cannot_be_reopened_in_the_same_process(tmp_path: Path):
    from mezo_ckpt.trajectory import TrajectoryWriter

    traj = read_trajectory(GOLDEN / "llama-fp32-normal16.zst")
    p = tmp_path / "j.zst.partial"
    with TrajectoryWriter.create(p, traj.header) as w:
        w.append_steps(traj.records.slice(0, 1))
        data = p.read_bytes()
        with pytest.raises(RunLockedError, match="holds the file's lock"):
            TrajectoryWriter.create(p, traj.header)
        with pytest.raises(RunLockedError):
            TrajectoryWriter.open_for_resume(p)
        assert p.read_bytes() == data
    w2, again = TrajectoryWriter.open_for_resume(p)  # released on close
    w2.close()
    assert again.num_steps == 1


def test_busy_output_is_refused_with_run_locked_error(tmp_path: Path):
    from mezo_ckpt.util.fsutil import exclusive_lock

    with (
        exclusive_lock(tmp_path / "run.zst", "training into"),
        pytest.raises(RunLockedError, match="another process"),
        exclusive_lock(tmp_path / "run.zst", "training into"),
    ):
        pass


def test_lock_file_race_cannot_admit_two_runs(tmp_path: Path):
    """Lock files are never removed (removing one after release would let a process that
    opened the old file and one that creates a new one both hold "the" lock), and they
    live outside the user's folder."""
    from mezo_ckpt.util.fsutil import exclusive_lock, lock_path

    target = tmp_path / "run.zst"
    with exclusive_lock(target, "training into"):  # run A
        pass
    assert lock_path(target).exists()  # still there after release: one file, one lock
    assert list(tmp_path.iterdir()) == []  # nothing next to the output
    with (
        exclusive_lock(target, "training into"),  # run B
        pytest.raises(RunLockedError),
        exclusive_lock(target, "training into"),  # run C
    ):
        pass


def test_rerun_without_resume_refuses_existing_output_and_journal(
    runs: dict[str, Run], tmp_path: Path
):
    run = runs["gpt2"]
    out = tmp_path / "run.zst"
    shutil.copy2(run.traj, out)
    refused(cli(*run.cli_args(out)), "OutputExistsError")
    assert out.read_bytes() == run.traj.read_bytes() and listing(tmp_path) == ["run.zst"]
    out.unlink()
    journal = tmp_path / "run.zst.partial"
    journal.write_bytes(run.journal)
    refused(cli(*run.cli_args(out)), "OutputExistsError")
    assert journal.read_bytes() == run.journal and listing(tmp_path) == ["run.zst.partial"]
    journal.unlink()
    log = tmp_path / "run.zst.log.jsonl"
    log.write_text("mine\n")
    refused(cli(*run.cli_args(out)), "OutputExistsError")
    assert log.read_text() == "mine\n" and listing(tmp_path) == ["run.zst.log.jsonl"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_replay_never_writes_over_its_inputs(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
):
    run = runs["gpt2"]
    traj = tmp_path / "run.zst"
    shutil.copy2(run.traj, traj)
    base = tmp_path / "base"
    shutil.copytree(run.base, base)
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    flag = ["--overwrite"] if overwrite else []
    no_work(monkeypatch)
    refused(cli("replay", traj, "--format", "delta", "-o", traj, *flag), "OutputError")
    refused(cli("replay", traj, "--format", "safetensors", "-o", traj, *flag), "OutputError")
    refused(cli("replay", traj, "--base", base, "-o", base, *flag), "OutputError")
    refused(cli("replay", traj, "--base", base, "-o", base / "sub", *flag), "OutputError")
    refused(cli("replay", traj, "--base", base, "-o", tmp_path, *flag), "OutputError")
    assert traj.read_bytes() == run.traj.read_bytes()
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    assert listing(tmp_path) == ["base", "run.zst"]


def test_replay_onto_non_empty_folder_fails_before_any_work(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = runs["gpt2"]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    no_work(monkeypatch)
    t0 = time.monotonic()
    refused(cli("replay", run.traj, "--base", run.base, "-o", out), "OutputExistsError")
    assert time.monotonic() - t0 < 5
    assert listing(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_killed_writers_are_cleaned(runs: dict[str, Run], tmp_path: Path):
    run = runs["gpt2"]
    dead, alive = dead_pid(), os.getpid()
    stale = tmp_path / f".tuned.tmp-{dead}-0badf00d"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    stale_file = tmp_path / f".w.safetensors.tmp-{dead}-deadbeef"
    stale_file.write_bytes(b"\0" * 4096)
    live = tmp_path / f".tuned.tmp-{alive}-12345678"  # a writer still running: kept
    live.mkdir()
    res = cli("replay", run.traj, "--base", run.base, "-o", tmp_path / "tuned", "-q")
    assert res.exit_code == 0, res.output
    res = cli(
        "replay",
        run.traj,
        "--base",
        run.base,
        "--format",
        "safetensors",
        "-o",
        tmp_path / "w.safetensors",
    )
    assert res.exit_code == 0, res.output
    assert not stale.exists() and not stale_file.exists() and live.exists()


# ============================================================================ 5. resume


def test_resume_after_kill_9_equals_straight_run(runs: dict[str, Run], tmp_path: Path):
    run = runs["llama"]
    out = tmp_path / "run.zst"
    journal = out.with_name(out.name + ".partial")
    proc = slow_train(run.cli_args(out, steps=10), 0.2, tmp_path / "killed.log")
    try:
        wait_for_steps(journal, 3, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and journal.exists()
    assert 3 <= read_trajectory(journal, allow_truncated_tail=True).num_steps < 10
    res = cli(*run.resume_args(out))
    assert res.exit_code == 0, res.output
    assert not journal.exists()
    straight = train(run.config(tmp_path / "straight.zst", steps=10), progress=False, log=quiet)
    a, b = read_trajectory(straight.output), read_trajectory(out)
    assert b.complete and b.num_steps == 10
    assert (a.records.coefs == b.records.coefs).all() and (a.records.flags == b.records.flags).all()
    assert a.checkpoints == b.checkpoints
    assert [(e.step, e.split, e.metrics) for e in a.evaluations] == [
        (e.step, e.split, e.metrics) for e in b.evaluations
    ]
    assert_same(replayed(run, straight.output), replayed(run, out))


def _die_before_checkpoint(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    real = MezoRecipe.checkpoint

    def dying(self: MezoRecipe, s: int) -> str:
        if s == at and s not in self.checkpoints:
            raise Killed(f"killed before the checkpoint at {s}")
        return real(self, s)

    monkeypatch.setattr(MezoRecipe, "checkpoint", dying)


def _die_before_evaluation(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    real = TrajectoryWriter.append_evaluation

    def dying(self: TrajectoryWriter, e: Any) -> Any:
        if e.step == at:
            raise Killed(f"killed before the evaluation at {e.step}")
        return real(self, e)

    monkeypatch.setattr(TrajectoryWriter, "append_evaluation", dying)


KILLS = {
    "before-ckpt-3": (_die_before_checkpoint, 3),
    "before-eval-3": (_die_before_evaluation, 3),
    "before-ckpt-6": (_die_before_checkpoint, 6),
    "before-eval-6": (_die_before_evaluation, 6),
}


@pytest.mark.parametrize(
    "kill",
    [
        "before-ckpt-3",
        "before-eval-3",
        "before-ckpt-6",
        "before-eval-6",
    ],
)
def test_kill_between_record_and_evaluation_is_repaired(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: str
):
    run = runs["gpt2"]
    die, at = KILLS[kill]
    out = tmp_path / "run.zst"
    with monkeypatch.context() as mp:
        die(mp, at)
        with pytest.raises(Killed):
            train(run.config(out), progress=False, log=quiet)
    journal = read_trajectory(out.with_name(out.name + ".partial"))
    assert journal.num_steps == at and not out.exists()
    assert (at, "dev") not in {(e.step, e.split) for e in journal.evaluations}
    resumed = train(run.config(out), resume=out, progress=False, keep_model=True, log=quiet)
    assert_same(run.state, params_of(resumed.model))
    a, b = read_trajectory(run.traj), read_trajectory(out)
    assert (
        b.complete
        and at in b.checkpoints
        and (at, "dev") in {(e.step, e.split) for e in b.evaluations}
    )
    assert a.checkpoints == b.checkpoints
    assert sorted((e.step, e.split, e.metrics["accuracy"]) for e in a.evaluations) == sorted(
        (e.step, e.split, e.metrics["accuracy"]) for e in b.evaluations
    )
    assert best_step(a) == best_step(b)
    assert_same(replayed(run, run.traj, "best"), replayed(run, out, "best"))


def test_extend_constant_run_and_refuse_cosine(runs: dict[str, Run], tmp_path: Path):
    run = runs["llama"]
    out = tmp_path / "run.zst"
    shutil.copy2(run.traj, out)
    res = cli(*run.resume_args(out, "--steps", 9))
    assert res.exit_code == 0, res.output
    straight = train(
        run.config(tmp_path / "nine.zst", steps=9), progress=False, keep_model=True, log=quiet
    )
    ext = read_trajectory(out)
    assert ext.complete and ext.num_steps == 9
    assert (ext.records.coefs == read_trajectory(straight.output).records.coefs).all()
    assert_same(params_of(straight.model), replayed(run, out))
    cos = tmp_path / "cos.zst"
    train(run.config(cos, schedule="cosine"), progress=False, log=quiet)
    before = cos.read_bytes()
    refused(cli(*run.resume_args(cos, "--steps", 20)), "ConfigError")
    assert cos.read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob("cos.zst*")) == ["cos.zst", "cos.zst.log.jsonl"]


def _evil_journal(run: Run, tmp_path: Path, evil: dict[str, Any]) -> Path:
    def edit(h: dict) -> None:
        h["config"].update(evil)

    journal = tmp_path / "run.zst.partial"
    journal.write_bytes(edit_header(run.journal, edit))
    assert read_trajectory(journal).header.config["train_file"] == evil["train_file"]
    return journal


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path this process opens (open, io.open, os.open) while the test runs."""
    import io

    seen: list[str] = []
    real_open, real_os_open = io.open, os.open

    def rec_open(file: Any, *a: Any, **k: Any) -> Any:
        seen.append(str(file))
        return real_open(file, *a, **k)

    def rec_os_open(path: Any, *a: Any, **k: Any) -> int:
        seen.append(str(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", rec_open)
    monkeypatch.setattr(io, "open", rec_open)
    monkeypatch.setattr(os, "open", rec_os_open)
    return seen


def test_crafted_journal_paths_are_not_obeyed(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[str]
):
    run = runs["gpt2"]
    evil_log, evil_save = tmp_path / "evil-log.jsonl", tmp_path / "evil-save"
    evil = {
        "log_file": str(evil_log),
        "save_model": str(evil_save),
        "train_file": "/etc/passwd",
        "dev_file": "/etc/passwd",
        "test_file": "/etc/passwd",
        "model": "attacker/evil-base",
        "dataset": "attacker/evil-data",
        "objective": "python:os:system",
    }

    def fetched(*a: Any, **k: Any) -> None:
        raise AssertionError(f"the Hub was asked for {a} {k}")

    monkeypatch.setattr("mezo_ckpt.models.remote.download_base", fetched)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fetched)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fetched)
    _evil_journal(run, tmp_path, evil)
    before = (tmp_path / "run.zst.partial").read_bytes()
    res = cli("train", "--resume", tmp_path / "run.zst", "-q")
    refused(res, "ConfigError")
    for flag in ("--train-file", "--model", "--dataset", "--objective", "--test-file"):
        assert flag in res.output
    # the user names the real ones; the journal's log / save folder are not used either
    res = cli(*run.resume_args(tmp_path / "run.zst"))
    refused(res, "ConfigError")  # still: --dataset, --objective, --test-file were used
    assert (tmp_path / "run.zst.partial").read_bytes() == before
    del evil["dataset"], evil["objective"], evil["test_file"]
    (tmp_path / "run.zst.partial").unlink()
    _evil_journal(run, tmp_path, evil)
    res = cli(*run.resume_args(tmp_path / "run.zst"))
    assert res.exit_code == 0, res.output
    assert "--log-file" in res.output and "--save-model" in res.output  # said so
    assert not evil_log.exists() and not evil_save.exists()
    assert (tmp_path / "run.zst.log.jsonl").exists()
    assert read_trajectory(tmp_path / "run.zst").complete
    assert any(run.data["train_file"] in p for p in opened)  # the recorder works
    assert not [p for p in opened if "passwd" in p or "evil" in p]


# ============================================================================ 6. typed errors


@pytest.mark.parametrize(
    "fmt,target,code,word",
    [
        ("hf", "replace", errno.EROFS, "read-only"),
        ("hf", "fsync", errno.ENOSPC, "disk is full"),
        ("safetensors", "replace", errno.EROFS, "read-only"),
        ("safetensors", "fsync", errno.ENOSPC, "disk is full"),
        ("delta", "replace", errno.ENOSPC, "disk is full"),
    ],
)
def test_replay_onto_read_only_or_full_disk_is_typed(
    runs: dict[str, Run],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    target: str,
    code: int,
    word: str,
):
    run = runs["gpt2"]
    out = tmp_path / "out" / ("tuned" if fmt == "hf" else "w.safetensors")
    out.parent.mkdir()

    def failing(*a: Any, **k: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, target, failing)
    res = cli("replay", run.traj, "--base", run.base, "--format", fmt, "-o", out, "-q")
    monkeypatch.undo()
    refused(res, "OutputError")
    assert word in res.output
    assert not out.exists() and listing(out.parent) == []  # no temp sibling left behind


@pytest.mark.parametrize("fmt", ["safetensors", "delta"])
def test_replay_file_output_into_a_new_folder(runs: dict[str, Run], tmp_path: Path, fmt: str):
    run = runs["gpt2"]
    out = tmp_path / "new" / "w.safetensors"
    res = cli("replay", run.traj, "--base", run.base, "--format", fmt, "-o", out, "-q")
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 0 or "Error (OutputError)" in res.output, res.output


def test_file_where_folder_is_needed_and_the_reverse(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = runs["gpt2"]
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    no_work(monkeypatch)
    refused(cli("replay", run.traj, "--base", run.base, "-o", a_file), "OutputError")
    refused(cli("replay", run.traj, "--base", run.base, "-o", a_file / "sub"), "OutputError")
    refused(
        cli("replay", run.traj, "--base", run.base, "--format", "safetensors", "-o", a_dir),
        "OutputError",
    )
    monkeypatch.undo()
    refused(cli("replay", run.traj, "--base", a_file, "-o", tmp_path / "o"), "ModelLoadError")
    res = cli("info", a_dir)  # click refuses a folder where a file is needed
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert a_file.read_text() == "mine" and listing(a_dir) == []


def test_train_on_full_disk_keeps_the_journal_and_says_how_to_resume(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = runs["gpt2"]
    out = tmp_path / "run.zst"
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] >= 5:  # header, step 0 eval, a few steps: then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = cli(*run.cli_args(out))
    monkeypatch.undo()
    refused(res, "OutputError")
    assert "disk is full" in res.output and f"mezo-ckpt train --resume {out}" in res.output
    journal = out.with_name(out.name + ".partial")
    assert not out.exists() and journal.exists()
    kept = read_trajectory(journal, allow_truncated_tail=True)
    assert 1 <= kept.num_steps < STEPS
    res = cli(*run.resume_args(out))
    assert res.exit_code == 0, res.output
    done = read_trajectory(out)
    assert done.complete and done.checkpoints == read_trajectory(run.traj).checkpoints


def test_diverging_run_is_typed_and_leaves_a_valid_trajectory(runs: dict[str, Run], tmp_path: Path):
    run = runs["gpt2"]
    out = tmp_path / "div.zst"
    args = run.cli_args(out)
    args[args.index("--lr") + 1] = "1e29"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli(*args)
        refused(res, "TrainingDivergedError")
        traj = read_trajectory(out)  # strict: a whole, sealed file
        assert traj.sealed and not out.with_name(out.name + ".partial").exists()
        res = cli("replay", out, "--base", run.base, "-o", tmp_path / "o", "-q")
    assert res.exit_code == 0, res.output


CRAFTED_CONFIGS: dict[str, Callable[[dict], None]] = {
    "optimizer-empty": lambda h: h.update(optimizer={}),
    "config-empty": lambda h: h.update(config={}),
    "template-brace": lambda h: h["config"]["resolved_task"].update(template="{"),
    "verbalizer-list": lambda h: h["config"]["resolved_task"].update(verbalizer=["a", "b"]),
    "data-list-no-task": lambda h: (h["config"].pop("resolved_task"), h["config"].update(data=[])),
    "template-number": lambda h: h["config"]["resolved_task"].update(template=7),
    "evaluations-odd-metrics": lambda h: h["config"].update(task=["x"], train_file={"a": 1}),
}


@pytest.mark.parametrize(
    "craft",
    [pytest.param(c) for c in CRAFTED_CONFIGS],
)
def test_push_dry_run_on_crafted_headers_is_never_a_traceback(
    runs: dict[str, Run], tmp_path: Path, craft: str
):
    def edit(h: dict) -> None:
        hub_kind(h)
        CRAFTED_CONFIGS[craft](h)

    path = tmp_path / "crafted.zst"
    path.write_bytes(edit_header(runs["gpt2"].traj.read_bytes(), edit))
    read_trajectory(path)  # a valid file: only informational fields changed
    res = cli("push", path, "tester/crafted", "--dry-run", tmp_path / "d")
    assert res.exit_code in (0, 2), res.output
    assert "Traceback" not in res.output and (
        res.exception is None or isinstance(res.exception, SystemExit)
    ), repr(res.exception)
    if res.exit_code == 0:
        assert (tmp_path / "d" / "README.md").exists()


FIFO_PROBE = """
import json, sys, time
from click.testing import CliRunner
from mezo_ckpt.cli import main
for args in json.loads(sys.argv[1]):
    print("START", json.dumps(args), flush=True)
    t0 = time.monotonic()
    r = CliRunner().invoke(main, args)
    print("DONE", json.dumps([args, r.exit_code, r.output, repr(r.exception),
                              time.monotonic() - t0]), flush=True)
"""


def test_devices_and_fifos_never_hang(tmp_path: Path):
    """`info /dev/zero` and a FIFO given to every command that reads a trajectory: a typed
    error at once (a separate process, so a hang is a timeout, not a stuck suite)."""
    fifo = tmp_path / "fifo.zst"
    os.mkfifo(fifo)
    calls = [
        ["info", "/dev/zero"],
        ["info", str(fifo)],
        ["replay", str(fifo), "-o", str(tmp_path / "o")],
        ["pull", str(fifo)],
        ["push", str(fifo), "tester/x", "--dry-run", str(tmp_path / "d")],
        ["train", "--resume", str(fifo)],
    ]
    try:
        p = subprocess.run(
            [sys.executable, "-c", FIFO_PROBE, json.dumps(calls)],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    except subprocess.TimeoutExpired as e:
        started = [line for line in (e.stdout or b"").decode().splitlines() if "START" in line]
        pytest.fail(f"hangs: {started[-1] if started else 'before the first command'}")
    done = [json.loads(line[5:]) for line in p.stdout.splitlines() if line.startswith("DONE ")]
    assert [d[0] for d in done] == calls, p.stdout + p.stderr
    for args, code, output, exc, seconds in done:
        assert code == 2 and re.search(r"Error \(\w+Error\)", output), (args, output, exc)
        assert "Traceback" not in output and seconds < 20, (args, seconds)


def test_plot_never_writes_over_the_trajectory(runs: dict[str, Run], tmp_path: Path):
    traj = tmp_path / "run.zst"
    shutil.copy2(runs["gpt2"].traj, traj)
    res = cli("info", traj, "--plot", traj)
    assert traj.read_bytes() == runs["gpt2"].traj.read_bytes()
    refused(res, "OutputError")


def test_plot_never_replaces_an_existing_file(runs: dict[str, Run], tmp_path: Path):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    res = cli("info", runs["gpt2"].traj, "--plot", mine)
    assert mine.read_bytes() == b"my picture"
    refused(res, "OutputExistsError")


def test_hub_repo_named_by_a_trajectory_is_never_a_local_path(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = runs["gpt2"]
    traj = tmp_path / "hub.zst"
    traj.write_bytes(edit_header(run.traj.read_bytes(), hub_kind))
    shutil.copytree(run.base, tmp_path / "tester" / "tiny-base")  # a folder named like it
    monkeypatch.chdir(tmp_path)
    loaded: list[str] = []
    real = mezo_ckpt.models.base.load_folder

    def spy(folder: Any, *a: Any, **k: Any) -> Any:
        loaded.append(str(folder))
        return real(folder, *a, **k)

    monkeypatch.setattr(mezo_ckpt.models.base, "load_folder", spy)
    res = cli("replay", traj, "-o", tmp_path / "out", "-q")
    assert not [f for f in loaded if "tester" in f and "tiny-base" in f], loaded
    assert res.exit_code == 2 and not (tmp_path / "out").exists(), res.output


def test_resume_does_not_report_where_a_crafted_journal_says(
    runs: dict[str, Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import types

    inits: list[dict] = []

    def init(**kw: Any) -> Any:
        inits.append(kw)
        return types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run = runs["gpt2"]

    def edit(h: dict) -> None:
        h["config"]["report_to"] = "wandb"

    (tmp_path / "run.zst.partial").write_bytes(edit_header(run.journal, edit))
    res = cli(*run.resume_args(tmp_path / "run.zst"))
    assert not inits, "the resume reported to wandb, which the user never asked for"
    assert res.exit_code in (0, 2) and "Traceback" not in res.output


def test_log_file_inside_the_base_is_refused_even_with_overwrite(
    runs: dict[str, Run], tmp_path: Path
):
    run = runs["gpt2"]
    base = tmp_path / "base"
    shutil.copytree(run.base, base)
    weights = (base / "model.safetensors").read_bytes()
    args = run.cli_args(tmp_path / "run.zst", "--overwrite")
    args[args.index("--model") + 1] = base
    res = cli(*args, "--log-file", base / "model.safetensors")
    assert (base / "model.safetensors").read_bytes() == weights
    refused(res, "OutputError")


def test_log_file_cannot_be_the_runs_own_journal(runs: dict[str, Run], tmp_path: Path):
    run = runs["gpt2"]
    out = tmp_path / "run.zst"
    res = cli(*run.cli_args(out), "--log-file", tmp_path / "run.zst.partial")
    if res.exit_code == 0:  # accepted: then the run must have survived it
        assert read_trajectory(out).complete
    else:
        refused(res, "OutputError", "ConfigError")
        assert listing(tmp_path) == [], "refused, but only after writing"


# ============================================================================ 7. escaping


def _escaped_file(run: Run, tmp_path: Path) -> Path:
    def edit(h: dict) -> None:
        h["tool"]["version"] = f"0.2{ESC}"
        h["base"]["architecture"] = f"GPT2{ESC}LMHeadModel"

    data = edit_header(run.traj.read_bytes(), edit)
    data = edit_tail(
        data, lambda tag, o: {**o, "split": f"dev{ESC}"} if tag == b"EVAL" and o["step"] else o
    )
    path = tmp_path / "esc.zst"
    path.write_bytes(data)
    return path


def test_info_prints_header_strings_escaped(runs: dict[str, Run], tmp_path: Path):
    path = _escaped_file(runs["gpt2"], tmp_path)
    s = read_trajectory(path)
    assert s.header.tool.version.endswith(ESC)  # the file really carries the escapes
    res = cli("info", path)
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "\\x1b]0;pwned\\x07" in res.output
    res = cli("info", path, "--json")
    assert res.exit_code == 0 and "\x1b" not in res.output
    assert json.loads(res.output)["tool"]["version"].endswith(ESC)


def _mismatching_config_file(run: Run, tmp_path: Path) -> Path:
    def edit(h: dict) -> None:  # the base's config, as the header records it, differs
        from mezo_ckpt.core.hashing import json_sha256

        h["base"]["config"][f"key{ESC}"] = f"value{ESC}"
        h["base"]["config_sha256"] = json_sha256(h["base"]["config"])  # consistent: it must be

    path = tmp_path / "esc.zst"
    path.write_bytes(edit_header(run.traj.read_bytes(), edit))
    return path


def test_base_mismatch_error_prints_header_strings_escaped(runs: dict[str, Run], tmp_path: Path):
    """The differences listed for a wrong base quote the header: escaped on the terminal."""
    run = runs["gpt2"]
    path = _mismatching_config_file(run, tmp_path)
    res = cli("replay", path, "--base", run.base, "-o", tmp_path / "a", "-q")
    refused(res, "BaseMismatchError")
    assert "\x1b" not in res.output and "\\x1b" in res.output


def test_ignore_base_mismatch_warning_prints_header_strings_escaped(
    runs: dict[str, Run], tmp_path: Path
):
    run = runs["gpt2"]
    path = _mismatching_config_file(run, tmp_path)

    def show(message: Any, category: Any, filename: str, lineno: int, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():  # as outside pytest: warnings reach the terminal
        warnings.simplefilter("default")
        warnings.showwarning = show
        res = cli(
            "replay", path, "--base", run.base, "-o", tmp_path / "b", "--ignore-base-mismatch"
        )
    assert res.exit_code == 0, res.output
    assert "\\x1b" in res.output  # the CLI's own WARNING lines are escaped...
    bad = [line for line in res.output.splitlines() if "\x1b" in line]
    assert not bad, bad  # ...and so must be everything else that reaches the terminal


def _body_outside_code(card: str) -> str:
    body = card.split("\n---\n", 1)[1]
    body = re.sub(r"```.*?```", "", body, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", body)


def test_model_card_escapes_markdown_and_html_from_the_header(runs: dict[str, Run], tmp_path: Path):
    evil_md = "[click me](https://evil.example/x) <img src=x onerror=alert(1)> **bold**"

    def edit(h: dict) -> None:
        hub_kind(h)
        h["tool"]["version"] = "<script>alert(1)</script>"
        h["optimizer"]["schedule"] = evil_md
        h["config"]["notes"] = evil_md
        h["config"][f"<b>{evil_md}</b>"] = 1
        h["config"]["resolved_task"]["template"] = "{text}```\n<script>alert(2)</script>\n```"
        h["base"]["architecture"] = "Arch`<img src=y onerror=alert(3)>`"

    data = edit_header(runs["gpt2"].traj.read_bytes(), edit)
    data = edit_tail(data, lambda tag, o: {**o, "split": evil_md[:60]} if tag == b"EVAL" else o)
    path = tmp_path / "md.zst"
    path.write_bytes(data)
    out = tmp_path / "d"
    res = cli("push", path, "tester/md", "--dry-run", out)
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    from huggingface_hub import ModelCard

    ModelCard(card)  # the metadata still parses
    body = re.sub(r"\\.", "", _body_outside_code(card))  # drop escaped characters
    for raw in ("<script", "<img", "](https://evil", "**bold**", "<b>"):
        assert raw not in body, raw  # markup only ever escaped, or inside code
    assert card.split("\n---\n", 1)[1].count("```") % 2 == 0  # no code fence broken open
