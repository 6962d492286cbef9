"""The packaged recipes (``-c sst2`` ... ``-c drop``) on tiny local copies of their datasets.

Each dataset is rebuilt with the same column names and types as its Hub version (SuperGLUE's
nested ``idx``, SQuAD's ``answers`` dict, ReCoRD's list of entities ...), saved with
``save_to_disk`` and passed with ``--dataset``, so every field a recipe names is read the
way it would be from the Hub. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from paths import ROOT
from tinymodels import save_tiny

from mezo_ckpt import recipes
from mezo_ckpt.cli import main
from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer.config import resolve_config
from mezo_ckpt.trainer.yaml_files import load_yaml
from mezo_ckpt.trajectory import read_trajectory

datasets = pytest.importorskip("datasets")


def _super_glue(name: str, i: int) -> dict:
    w = ["cat", "dog", "sun", "rain"][i % 4]
    lab = i % 2
    rows = {
        "boolq": {"question": f"is the {w} out", "passage": f"The {w} is out.", "label": lab},
        "cb": {"premise": f"A {w} ran.", "hypothesis": f"The {w} moved.", "label": i % 3},
        "rte": {"premise": f"A {w} ran.", "hypothesis": f"The {w} moved.", "label": lab},
        "copa": {
            "premise": f"The {w} was wet.",
            "choice1": "It rained.",
            "choice2": "It was sunny.",
            "question": ["cause", "effect"][lab],
            "label": lab,
        },
        "multirc": {
            "paragraph": f"The {w} sat on a mat.",
            "question": "Where did it sit?",
            "answer": ["on a mat", "in a box"][lab],
            "idx": {"paragraph": 0, "question": i, "answer": 0},
            "label": 1 - lab,
        },
        "wic": {
            "word": w,
            "sentence1": f"The {w} is here.",
            "sentence2": f"A {w} came.",
            "start1": 4,
            "start2": 2,
            "end1": 7,
            "end2": 5,
            "label": lab,
        },
        "wsc.fixed": {
            "text": f"The {w} saw Bob and it ran.",
            "span1_index": 1,
            "span2_index": 6,
            "span1_text": w,
            "span2_text": "it",
            "label": lab,
        },
        "record": {
            "passage": f"Ann met Bob near the {w}.",
            "query": "@placeholder met Bob.",
            "entities": ["Ann", "Bob", w],
            "entity_spans": {"text": ["Ann", "Bob"], "start": [0, 8], "end": [3, 11]},
            "answers": [["Ann", "Bob"][lab]],
        },
    }[name]
    rows.setdefault("idx", i)
    return rows


def _rows(recipe: str, i: int) -> dict:
    w = ["cat", "dog", "sun", "rain"][i % 4]
    if recipe == "sst2":
        return {"idx": i, "sentence": f"a {w} film", "label": i % 2}
    if recipe == "squad":
        return {
            "id": str(i),
            "title": "Pets",
            "context": f"The pet is a {w}.",
            "question": "What is the pet?",
            "answers": {"text": [w, f"a {w}"], "answer_start": [13, 11]},
        }
    if recipe == "drop":
        return {
            "section_id": "s",
            "query_id": str(i),
            "passage": f"The pet is a {w}.",
            "question": "What is the pet?",
            "answers_spans": {"spans": [w], "types": ["span"]},
        }
    cfg, _ = load_yaml(str(recipes.path(recipe)))
    return _super_glue(cfg["dataset_config"], i)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipes") / "llama"
    save_tiny(d)
    return d


def test_every_recipe_is_packaged_and_valid():
    assert sorted(recipes.NAMES) == sorted(
        p.stem for p in Path(recipes.__file__).parent.glob("*.yaml")
    )
    for name in recipes.NAMES:
        cfg = resolve_config(name)
        assert cfg.task == "custom" and cfg.dataset
        assert resolve_config(f"{name}.yaml").to_dict() == cfg.to_dict()


def test_paper_hyperparameters_are_the_defaults_of_every_recipe():
    # MeZO (Malladi et al. 2023), full-parameter: batch 16, eps 1e-3, lr 1e-6, 20k steps
    # for the large models; k = 16, batch 64, 100k steps, constant lr for the medium ones.
    for name in recipes.LARGE:
        cfg = resolve_config(name)
        assert (cfg.batch_size, cfg.eps, cfg.lr, cfg.steps) == (16, 1e-3, 1e-6, 20000), name
    for name in recipes.MEDIUM:
        cfg = resolve_config(name)
        assert (cfg.batch_size, cfg.eps, cfg.lr, cfg.steps) == (64, 1e-3, 1e-6, 100_000), name
        assert cfg.k_shot == 16 and cfg.schedule == "constant" and cfg.test_examples == 1000


def test_a_packaged_recipe_name_means_the_packaged_recipe(tmp_path, monkeypatch):
    """A file named like a recipe in the current folder (which could name an objective to
    import) never stands in for it; the file is named as a path."""
    monkeypatch.chdir(tmp_path)
    Path("sst2").write_text("lr: 0.5\nobjective: python:evil:run\n")
    assert resolve_config("sst2").lr == 1e-6  # the packaged recipe
    assert resolve_config("./sst2").lr == 0.5  # the file, named as a path
    assert resolve_config("sst2.yaml").lr == 1e-6  # no file of that name: the recipe
    Path("sst2.yaml").write_text("lr: 0.25\n")
    with pytest.raises(ConfigError, match="both the packaged recipe and a file"):
        resolve_config("sst2.yaml")
    assert resolve_config("./sst2.yaml").lr == 0.25


def test_unknown_recipe_lists_the_packaged_ones(tmp_path):
    with pytest.raises(ConfigError, match="packaged recipes: sst2, rte"):
        resolve_config("sst3")
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(str(tmp_path / "sst2.yaml"))  # a path is never a recipe name


def test_recipes_are_in_the_wheel_manifest():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"recipes/*.yaml"' in text


@pytest.mark.parametrize("name", recipes.LARGE)
def test_recipe_trains_and_replays_on_its_dataset_layout(name, tiny, tmp_path):
    data = tmp_path / "data"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([_rows(name, i) for i in range(8)]),
            "validation": datasets.Dataset.from_list([_rows(name, i) for i in range(8, 12)]),
        }
    ).save_to_disk(str(data))
    out = tmp_path / "t.zst"
    args = ["train", "-c", name, "--model", tiny, "--dataset", data, "--steps", "2"]
    args += ["--batch-size", "2", "--eval-every", "2", "--eval-examples", "4", "--no-eval-test"]
    args += ["--max-length", "60", "--max-new-tokens", "3", "--eps", "1e-2", "--lr", "1e-3"]
    args += ["--set", "fsync=false", "-q", "-o", out]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    traj = read_trajectory(out)
    cfg = traj.header.config
    packaged = yaml.safe_load(recipes.path(name).read_text())
    assert cfg["template"] == packaged["template"]
    kind = cfg["resolved_task"]["kind"]
    assert kind == (
        "generation"
        if "target_field" in packaged
        else "multiple_choice"
        if "options_field" in packaged
        else "classification"
    )
    r = CliRunner().invoke(
        main, ["replay", str(out), "--base", str(tiny), "-o", str(tmp_path / "w"), "-q"]
    )
    assert r.exit_code == 0, r.output


# ----------------------------------------------------------------------------- medium models


def _medium_row(recipe: str, i: int) -> dict:
    w = ["cat", "dog", "sun", "rain"][i % 4]
    return {
        "sst2-mlm": {"idx": i, "sentence": f"a {w} film", "label": i % 2},
        "sst5-mlm": {"text": f"a {w} film", "label": i % 5, "label_text": "x"},
        # SNLI marks pairs without a gold label -1: they are left out
        "snli-mlm": {"premise": f"A {w} ran", "hypothesis": f"the {w} moved", "label": i % 4 - 1},
        "mnli-mlm": {"premise": f"A {w} ran", "hypothesis": f"the {w} moved", "label": i % 3,
                     "idx": i},
        "rte-mlm": {"sentence1": f"A {w} ran", "sentence2": f"the {w} moved", "label": i % 2,
                    "idx": i},
        "trec-mlm": {"text": f"What is a {w}?", "coarse_label": i % 6, "fine_label": i % 47},
    }[recipe]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_masked_base(tmp_path_factory):
    """A tiny RoBERTa whose tokenizer has every medium recipe's label words as one token
    each (as RoBERTa's BPE has them)."""
    from tinymodels import save_tiny_masked

    words = set()
    for name in recipes.MEDIUM:
        words.update(load_yaml(str(recipes.path(name)))[0]["verbalizer"].values())
    d = tmp_path_factory.mktemp("medium") / "roberta"
    save_tiny_masked(d, words=tuple(sorted(words)))
    return d


@pytest.mark.parametrize("name", recipes.MEDIUM)
def test_medium_recipe_trains_a_masked_lm_on_its_dataset_layout(name, tiny_masked_base, tmp_path):
    """Each medium recipe on a tiny copy of its dataset (its split names and columns),
    with a k-shot draw (k = 2 here), a masked LM, and a replay."""
    settings, _ = load_yaml(str(recipes.path(name)))
    data = tmp_path / "data"
    rows = [_medium_row(name, i) for i in range(60)]
    datasets.DatasetDict(
        {
            settings["train_split"]: datasets.Dataset.from_list(rows[:48]),
            settings["dev_split"]: datasets.Dataset.from_list(rows[48:]),
        }
    ).save_to_disk(str(data))
    out = tmp_path / "t.zst"
    args = ["train", "-c", name, "--model", tiny_masked_base, "--dataset", data, "--steps", "2"]
    args += ["--set", "k_shot=2", "--batch-size", "4", "--eval-every", "2", "--max-length", "60"]
    args += ["--set", "fsync=false", "-q", "-o", out]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    cfg = read_trajectory(out).header.config
    assert cfg["resolved_task"]["masked_lm"] is True
    n_classes = len(settings["verbalizer"])
    assert cfg["data"]["k_shot"]["k"] == 2 and cfg["data"]["train_examples"] == 2 * n_classes
    if name == "snli-mlm":
        # a quarter of each split is -1; the given dev split became the test split
        assert cfg["data"]["unlabelled_left_out"] == {"train": 12, "test": 3}
    r = CliRunner().invoke(
        main, ["replay", str(out), "--base", str(tiny_masked_base), "-o", str(tmp_path / "w"), "-q"]
    )
    assert r.exit_code == 0, r.output
