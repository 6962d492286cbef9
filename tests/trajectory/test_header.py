"""mezo_ckpt.trajectory.header: typed header of a real trajectory, round trips, requires,
field errors."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.errors import HeaderError, TrajectoryFormatError, UnsupportedError
from mezo_ckpt.trajectory import read_trajectory
from mezo_ckpt.trajectory.header import (
    ADAPTER_INIT_RULE,
    HISTORY_FEATURE,
    KNOWN_FEATURES,
    PEFT_FEATURE,
    AdapterInfo,
    Header,
    OptimizerInfo,
    RecordLayout,
    is_repo_file,
    is_repo_id,
)

_DELETE = object()


@pytest.fixture(scope="module")
def header(tmp_path_factory) -> Header:
    """The header of a real 2-step run of a tiny model."""
    from mezo_ckpt.trainer import train

    root = tmp_path_factory.mktemp("header")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEZO_CKPT_CACHE", str(root / "cache"))
        save_tiny(root / "model")
        out = root / "run.zst"
        train(
            model=str(root / "model"),
            data={"train": toy_sentiment(16)},
            template="{text} =",
            verbalizer={"pos": "+", "neg": "-"},
            steps=2,
            batch_size=4,
            eval_every=0,
            eval_test=False,
            output=str(out),
            progress=False,
            log=lambda s: None,
            fsync=False,
        )
        return read_trajectory(out).header


@pytest.fixture
def raw(header) -> dict[str, Any]:
    """A fresh, JSON-clean copy of the real header object."""
    return json.loads(json.dumps(header.to_json()))


def edit(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with ``path`` (dotted, integer parts index lists) set."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return out


# ----------------------------------------------------------------------------- round trips


def test_real_header_is_typed(header):
    assert header.tool.name == "mezo-ckpt"
    assert header.total_steps == 2
    assert header.requires == ()
    assert header.peft is None
    assert header.records.history == 0 and header.records.losses is True
    assert header.seed == header.perturbation.seed == 0
    assert header.z == "normal16" and header.n_directions == 1
    assert header.trainable == tuple(sorted(header.trainable)) and header.trainable
    assert header.base.kind == "local" and header.base.repo_id is None
    assert header.base.architecture == "LlamaForCausalLM"
    assert header.base.pins_everything
    assert header.chain == "sha256-records-v1"
    assert header.optimizer.lr == 3e-5 and header.optimizer.batch_size == 4
    assert header.config["steps"] == 2
    names = [t.name for t in header.base.tensors]
    assert names == sorted(names)
    first = header.base.tensors[0]
    assert header.base.tensor(first.name) is first
    assert header.base.tensor("no.such.tensor") is None


def test_to_json_writes_back_what_was_read(header):
    assert header.to_json() == dict(header.raw)


def test_from_json_of_to_json_is_equal(header, raw):
    again = Header.from_json(raw)
    assert again == header
    assert again.to_json() == raw
    assert json.loads(json.dumps(again.to_json())) == raw


def test_build_from_typed_parts(header):
    parts = {
        name: getattr(header, name)
        for name in (
            "tool",
            "base",
            "trainable",
            "perturbation",
            "update",
            "records",
            "total_steps",
            "optimizer",
            "config",
            "requires",
            "created",
            "chain",
            "peft",
        )
    }
    built = Header.build(**parts)
    assert built == header
    assert dict(built.raw) == built.to_json()
    changed = Header.build(**{**parts, "total_steps": 9})
    assert changed.total_steps == 9 and changed != header


def test_build_validates(header):
    with pytest.raises(HeaderError, match="total_steps"):
        Header.build(
            tool=header.tool,
            base=header.base,
            trainable=header.trainable,
            perturbation=header.perturbation,
            update=header.update,
            records=header.records,
            total_steps=-1,
        )
    with pytest.raises(HeaderError, match="trainable must not be empty"):
        Header.build(
            tool=header.tool,
            base=header.base,
            trainable=(),
            perturbation=header.perturbation,
            update=header.update,
            records=header.records,
            total_steps=2,
        )


def test_build_adds_the_features_it_needs(header):
    hist = Header.build(
        **{
            "tool": header.tool,
            "base": header.base,
            "trainable": header.trainable,
            "perturbation": header.perturbation,
            "update": header.update,
            "records": RecordLayout(decay=False, losses=True, history=8),
            "total_steps": 2,
        }
    )
    assert hist.requires == (HISTORY_FEATURE,)
    assert hist.records.history == 8
    assert hist.to_json()["records"] == {"decay": False, "losses": True, "history": 8}
    lora = {"r": 8, "lora_alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
    adapter = AdapterInfo("lora", lora, ADAPTER_INIT_RULE, "ab" * 32)
    both = hist.with_(peft=adapter)
    parsed = Header.from_json(both.to_json())
    assert set(parsed.requires) == {HISTORY_FEATURE, PEFT_FEATURE}
    assert parsed.peft == adapter


def test_with_keeps_unknown_keys_and_follows_changes(raw):
    h = Header.from_json({**raw, "x_future": {"a": [1, 2]}})
    h2 = h.with_(total_steps=7)
    assert h2.raw["total_steps"] == 7
    assert h2.raw["x_future"] == {"a": [1, 2]}
    assert h.total_steps == 2  # frozen original unchanged


def test_coerce(header, raw):
    assert Header.coerce(header) is header
    parsed = Header.coerce(raw)
    assert isinstance(parsed, Header) and parsed == header
    with pytest.raises(HeaderError):
        Header.coerce(edit(raw, "total_steps", "2"))


# ----------------------------------------------------------------------------- requires


def test_known_features():
    assert sorted(KNOWN_FEATURES) == sorted([HISTORY_FEATURE, PEFT_FEATURE])


@pytest.mark.parametrize(
    "requires",
    [["future-v9"], [1], [{"name": "peft-v2"}], [None], ["PEFT-V1"], [PEFT_FEATURE, "x"]],
)
def test_unknown_feature_is_unsupported(raw, requires):
    with pytest.raises(UnsupportedError, match="requires features this version lacks"):
        Header.from_json(edit(raw, "requires", requires))


def test_unknown_feature_wins_over_a_broken_header(raw):
    # "upgrade", not "corrupt": a newer file may have a different layout
    broken = edit(raw, "requires", ["future-v9"])
    del broken["tool"], broken["base"]
    with pytest.raises(UnsupportedError):
        Header.from_json(broken)


def test_unsupported_is_not_a_format_error():
    assert not issubclass(UnsupportedError, TrajectoryFormatError)
    assert issubclass(UnsupportedError, NotImplementedError)
    assert issubclass(HeaderError, ValueError)


@pytest.mark.parametrize("requires", ["peft-v1", None, {"peft-v1": True}, 3])
def test_requires_not_a_list(raw, requires):
    with pytest.raises(HeaderError, match="header field requires has the wrong type"):
        Header.from_json(edit(raw, "requires", requires))


def test_requires_missing(raw):
    with pytest.raises(HeaderError, match="header field requires is missing"):
        Header.from_json(edit(raw, "requires", _DELETE))


def test_peft_feature_without_peft(raw):
    with pytest.raises(HeaderError, match=PEFT_FEATURE):
        Header.from_json(edit(raw, "requires", [PEFT_FEATURE]))


def test_peft_without_feature(raw):
    config = {"r": 2, "lora_alpha": 4.0, "target_modules": ["q_proj"]}
    peft = {"type": "lora", "config": config, "init": ADAPTER_INIT_RULE, "init_sha256": "0" * 64}
    with pytest.raises(HeaderError, match=PEFT_FEATURE):
        Header.from_json(edit(raw, "peft", peft))
    ok = Header.from_json(edit(edit(raw, "peft", peft), "requires", [PEFT_FEATURE]))
    assert ok.peft.type == "lora" and ok.requires == (PEFT_FEATURE,)


def test_history_feature_without_history(raw):
    with pytest.raises(HeaderError, match=HISTORY_FEATURE):
        Header.from_json(edit(raw, "requires", [HISTORY_FEATURE]))


def test_history_without_feature(raw):
    with pytest.raises(HeaderError, match=HISTORY_FEATURE):
        Header.from_json(edit(raw, "records.history", 4))
    ok = Header.from_json(edit(edit(raw, "records.history", 4), "requires", [HISTORY_FEATURE]))
    assert ok.records.history == 4


@pytest.mark.parametrize(
    "peft, what",
    [
        ({"type": "ia3"}, "unknown adapter type"),
        ({"init": "kaiming"}, "unknown adapter init rule"),
    ],
)
def test_peft_unknown_type_or_init(raw, peft, what):
    base = {"type": "lora", "config": {}, "init": ADAPTER_INIT_RULE, "init_sha256": "0" * 64}
    obj = edit(edit(raw, "peft", {**base, **peft}), "requires", [PEFT_FEATURE])
    with pytest.raises(UnsupportedError, match=what):
        Header.from_json(obj)


# ----------------------------------------------------------------------------- field errors

FIELD_ERRORS = [
    ("total_steps", "2", "header field total_steps has the wrong type (str)"),
    ("total_steps", True, "header field total_steps has the wrong type (bool)"),
    ("total_steps", 2.0, "header field total_steps has the wrong type (float)"),
    ("total_steps", -1, "header field total_steps must be in [0, 4294967295]"),
    ("total_steps", 2**32, "header field total_steps must be in [0, 4294967295]"),
    ("total_steps", _DELETE, "header field total_steps is missing"),
    ("perturbation.seed", -1, "header field perturbation.seed must be in"),
    ("perturbation.seed", 2**63, "header field perturbation.seed must be in"),
    ("perturbation.seed", "0", "header field perturbation.seed has the wrong type (str)"),
    ("perturbation.eps", 0, "header field perturbation.eps must be a finite number > 0"),
    ("perturbation.eps", -0.001, "header field perturbation.eps must be a finite number > 0"),
    ("perturbation.eps", "1e-3", "header field perturbation.eps has the wrong type (str)"),
    ("perturbation.n_directions", 0, "perturbation.n_directions must be in [1, 64]"),
    ("perturbation.n_directions", 65, "perturbation.n_directions must be in [1, 64]"),
    ("update.weight_decay", -0.1, "header field update.weight_decay must be a finite number >= 0"),
    ("update.weight_decay", None, "update.weight_decay has the wrong type (NoneType)"),
    ("update.decay_params", ["not.trainable"], "decay_params must be a subset of trainable"),
    ("update.decay_params", ["b", "a"], "update.decay_params must be sorted"),
    ("trainable", [], "header field trainable must not be empty"),
    ("trainable", ["b", "a"], "header field trainable must be sorted"),
    ("trainable", ["a", "a"], "header field trainable must be sorted and free of duplicates"),
    ("trainable", ["a", ""], "header field trainable must be a list of non-empty names"),
    ("trainable", ["a", 1], "header field trainable must be a list of non-empty names"),
    ("trainable", "a", "header field trainable has the wrong type (str)"),
    ("records.decay", "no", "header field records.decay has the wrong type (str)"),
    ("records.losses", 1, "header field records.losses has the wrong type (int)"),
    ("records", [], "header field records has the wrong type (list)"),
    ("tool.name", _DELETE, "header field tool.name is missing"),
    ("tool.version", 2, "header field tool.version has the wrong type (int)"),
    ("tool", "mezo-ckpt", "header field tool has the wrong type (str)"),
    ("optimizer", _DELETE, "header field optimizer is missing"),
    ("config", [], "header field config has the wrong type (list)"),
    ("integrity.chain", 5, "header field integrity.chain has the wrong type (int)"),
    ("base", _DELETE, "header field base is missing"),
    ("base.kind", "s3", "header field base.kind must be one of hub, local, embedded"),
    ("base.kind", "hub", "base.kind is hub but base.repo_id is missing"),
    ("base.dtype", "float64", "header field base.dtype must be one of"),
    ("base.num_parameters", -1, "header field base.num_parameters must be in"),
    ("base.num_parameters", 1.5, "base.num_parameters has the wrong type (float)"),
    ("base.tie_word_embeddings", 1, "base.tie_word_embeddings has the wrong type (int)"),
    ("base.manifest_sha256", "A" * 64, "base.manifest_sha256 is not a lowercase hex digest"),
    ("base.trainable_sha256", "0" * 63, "base.trainable_sha256 is not a lowercase hex digest"),
    ("base.revision", "0" * 64, "base.revision is not a lowercase hex digest"),
    ("base.repo_id", "../etc", "base.repo_id is not a Hub repo id"),
    ("base.repo_id", "https://evil.example/x", "base.repo_id is not a Hub repo id"),
    ("base.repo_id", 5, "base.repo_id is not a Hub repo id"),
    ("base.files", {"../config.json": "0" * 64}, "base.files has an unsafe file name"),
    ("base.files", {"/etc/passwd": "0" * 64}, "base.files has an unsafe file name"),
    ("base.files", {"config.json": "zz"}, "base.files['config.json'] is not a sha256"),
    ("base.files", _DELETE, "header field base.files is missing"),
    ("base.tokenizer", {"a/../b": "0" * 64}, "base.tokenizer has an unsafe file name"),
    ("base.config.vocab_size", 97, "base.config does not hash to base.config_sha256"),
    ("base.config_sha256", _DELETE, "base.config and base.config_sha256 go together"),
    ("base.tensors_sha256", _DELETE, "base.tensors and base.tensors_sha256 go together"),
    ("base.tensors.0.shape", [-1], "base.tensors[0].shape must list non-negative integers"),
    ("base.tensors.0.shape", [True], "base.tensors[0].shape must list non-negative integers"),
    ("base.tensors.1.sha256", "0" * 64, "base.tensors[1].sha256 is not a lowercase hex"),
    ("base.tensors.0.name", "", "base.tensors[0].name is empty or repeated"),
    ("base.tensors.0.aliases", ["z", "a"], "base.tensors[0].aliases must be sorted"),
    ("base.tensors.1.buffer", "yes", "base.tensors[1].buffer has the wrong type (str)"),
    ("base.embedded", {"gguf_file": "a/b.gguf", "gguf_sha256": "0" * 64}, "bare file name"),
    ("base.embedded", {"gguf_file": "m.gguf"}, "header field base.embedded.gguf_sha256 is missing"),
]


@pytest.mark.parametrize(
    "path, value, message",
    FIELD_ERRORS,
    ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(FIELD_ERRORS)],
)
def test_field_error_names_the_field(raw, path, value, message):
    with pytest.raises(HeaderError) as e:
        Header.from_json(edit(raw, path, value))
    assert message in str(e.value)


def test_tensors_must_be_sorted_by_name(raw):
    tensors = raw["base"]["tensors"]
    with pytest.raises(HeaderError, match="base.tensors must be sorted by name"):
        Header.from_json(edit(raw, "base.tensors", [tensors[1], tensors[0], *tensors[2:]]))


UNSUPPORTED = [
    ("perturbation.generator", "mt19937", "unknown generator"),
    ("perturbation.key_rule", "md5-v0", "unknown key rule"),
    ("perturbation.z", "uniform", "unknown z kind"),
    ("update.arithmetic", "fast-v2", "unknown update arithmetic"),
    ("update.rounding", "floor", "unknown rounding mode"),
    ("integrity.chain", "md5-records-v0", "unknown record chain rule"),
]


@pytest.mark.parametrize("path, value, message", UNSUPPORTED)
def test_unknown_algorithms_are_unsupported(raw, path, value, message):
    with pytest.raises(UnsupportedError, match=message):
        Header.from_json(edit(raw, path, value))


@pytest.mark.parametrize("obj", [[], "header", None, 3])
def test_header_not_an_object(obj):
    with pytest.raises(HeaderError, match="header is not a JSON object"):
        Header.from_json(obj)


def test_optional_fields_may_be_absent_or_null(raw):
    h = Header.from_json(edit(edit(raw, "integrity", _DELETE), "created", _DELETE))
    assert h.chain is None and h.created is None
    assert "integrity" not in h.to_json() and "created" not in h.to_json()
    h = Header.from_json(edit(raw, "integrity.chain", None))
    assert h.chain is None
    h = Header.from_json(edit(raw, "base.revision", None))
    assert h.base.revision is None


def test_rademacher_z_and_hub_base(raw):
    obj = edit(raw, "perturbation.z", "rademacher")
    obj = edit(edit(obj, "base.kind", "hub"), "base.repo_id", "HuggingFaceTB/SmolLM2-135M")
    obj = edit(obj, "base.revision", "a" * 40)
    h = Header.from_json(obj)
    assert h.z == "rademacher"
    assert (h.base.kind, h.base.repo_id, h.base.revision) == (
        "hub",
        "HuggingFaceTB/SmolLM2-135M",
        "a" * 40,
    )


def test_created_of_another_type_is_ignored(raw):
    assert Header.from_json(edit(raw, "created", 12345)).created is None


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_keys_are_kept_in_raw_and_written_back(raw):
    obj = edit(raw, "x_new_top", {"nested": ["é", 1.5]})
    obj = edit(obj, "base.x_new_base", "kept")
    obj = edit(obj, "optimizer.x_new_opt", 3)
    h = Header.from_json(obj)
    assert h.raw["x_new_top"] == {"nested": ["é", 1.5]}
    assert h.base.extra == {"x_new_base": "kept"}
    assert h.optimizer.extra["x_new_opt"] == 3
    out = h.to_json()
    assert out["x_new_top"] == {"nested": ["é", 1.5]}
    assert out["base"]["x_new_base"] == "kept"
    assert out["optimizer"]["x_new_opt"] == 3
    assert Header.from_json(out) == h


def test_unknown_keys_are_ignored_everywhere_when_reading(raw):
    obj = raw
    for path in ("perturbation", "update", "records", "tool", "integrity", "base.tensors.0"):
        obj = edit(obj, path + ".x_future", {"ignored": True})
    h = Header.from_json(obj)
    assert h.perturbation == Header.from_json(raw).perturbation
    assert h.raw["tool"]["x_future"] == {"ignored": True}


def test_optimizer_is_informational(raw):
    h = Header.from_json(edit(edit(raw, "optimizer.lr", "fast"), "optimizer.batch_size", True))
    assert h.optimizer.lr is None and h.optimizer.batch_size is None
    assert OptimizerInfo.from_json({}) == OptimizerInfo()
    assert OptimizerInfo(lr=1e-3, schedule="linear").to_json() == {"lr": 1e-3, "schedule": "linear"}


# ----------------------------------------------------------------------------- ids and names


@pytest.mark.parametrize(
    "value", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/model.v1_2", "a" * 96, "0x/y"]
)
def test_repo_ids(value):
    assert is_repo_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "../x",
        "a/../b",
        "a..b",
        "a--b",
        "/abs",
        "a/b/c",
        "https://hf.co/x",
        "-a",
        "a/",
        "a" * 97,
        "ünï/x",
        5,
        None,
    ],
)
def test_not_repo_ids(value):
    assert not is_repo_id(value)


@pytest.mark.parametrize("value", ["model.safetensors", "sub/dir/f.json", "..hidden", "a..b"])
def test_repo_files(value):
    assert is_repo_file(value)


@pytest.mark.parametrize(
    "value", ["", "../f", "a/../b", "/abs", "a//b", "a\\b", "a/", "dir/..", "é.json", None]
)
def test_not_repo_files(value):
    assert not is_repo_file(value)


def test_with_keeps_unknown_keys_inside_sections(raw):
    """A newer 1.x writer may add keys inside tool, perturbation, update or records
    (FORMAT.md §15); extending such a run (with_) must not drop them."""
    obj = edit(raw, "tool.commit", "abc123")
    obj = edit(obj, "perturbation.note", "from the future")
    obj = edit(obj, "records.future_column", False)
    h = Header.from_json(obj).with_(total_steps=raw["total_steps"] + 5)
    out = h.to_json()
    assert out["tool"]["commit"] == "abc123"
    assert out["perturbation"]["note"] == "from the future"
    assert out["records"]["future_column"] is False
    assert out["total_steps"] == raw["total_steps"] + 5
    assert Header.from_json(out).tool.version == raw["tool"]["version"]
