"""mezo_ckpt.trainer.yaml_files: the strict YAML reader (safe types, duplicate keys,
nesting) and which file a recipe name means (packaged recipe, path, ambiguity, limits)."""

from __future__ import annotations

import pytest

from mezo_ckpt import recipes
from mezo_ckpt.errors import ConfigError
from mezo_ckpt.trainer import yaml_files
from mezo_ckpt.trainer.yaml_files import MAX_YAML_BYTES, load_yaml, strict_yaml

# ----------------------------------------------------------------------------- strict_yaml


def test_strict_yaml_returns_data_and_node():
    import yaml

    data, node = strict_yaml("lr: 0.001\nsteps: 5\ntrainable: ['*']\n", "r.yaml")
    assert data == {"lr": 0.001, "steps": 5, "trainable": ["*"]}
    assert isinstance(node, yaml.MappingNode)
    assert [k.value for k, _ in node.value] == ["lr", "steps", "trainable"]


def test_strict_yaml_refuses_a_duplicate_key_with_its_line():
    with pytest.raises(ConfigError, match=r"^r\.yaml:3: the key 'lr' appears twice"):
        strict_yaml("lr: 1\nsteps: 2\nlr: 3\n", "r.yaml")
    # nested mappings are checked too
    with pytest.raises(ConfigError, match=r"r\.yaml:3: the key 'a' appears twice"):
        strict_yaml("columns:\n  a: x\n  a: y\n", "r.yaml")
    # the same key in two different mappings is fine
    data, _ = strict_yaml("x:\n  a: 1\ny:\n  a: 2\n", "r.yaml")
    assert data == {"x": {"a": 1}, "y": {"a": 2}}


def test_strict_yaml_refuses_python_tags_and_bad_syntax():
    with pytest.raises(ConfigError, match=r"^r\.yaml: not valid YAML: .*python/object"):
        strict_yaml("a: !!python/object/apply:os.system ['true']\n", "r.yaml")
    with pytest.raises(ConfigError, match=r"^r\.yaml: custom words: "):
        strict_yaml("a: [1, 2\n", "r.yaml", "custom words")


def test_strict_yaml_refuses_deep_nesting():
    with pytest.raises(ConfigError, match="nested too deeply to be a recipe"):
        strict_yaml("[" * 5000, "deep.yaml")


# ----------------------------------------------------------------------------- load_yaml


def test_load_yaml_normalises_dashes_and_records_lines(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("# a recipe\nbatch-size: 4\n\neval_every: 2\nno-decay: [bias]\n")
    data, lines = load_yaml(p)
    assert data == {"batch_size": 4, "eval_every": 2, "no_decay": ["bias"]}
    assert lines == {"batch_size": 2, "eval_every": 4, "no_decay": 5}


def test_load_yaml_empty_file_and_bom(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    assert load_yaml(empty) == ({}, {})
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfsteps: 7\n")
    assert load_yaml(bom) == ({"steps": 7}, {"steps": 1})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_load_yaml_top_level_must_be_a_mapping(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_yaml(p)


def test_load_yaml_refuses_non_utf8_and_oversized(tmp_path, monkeypatch):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"template: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_yaml(latin)
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" + "#" * 200 + "\n")
    monkeypatch.setattr(yaml_files, "MAX_YAML_BYTES", 100)
    with pytest.raises(ConfigError, match=r"bytes is not a recipe \(at most 100\)"):
        load_yaml(big)
    assert MAX_YAML_BYTES == 1 << 20


def test_load_yaml_missing_file_lists_packaged_recipes(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as e:
        load_yaml(tmp_path / "nope.yaml")
    assert "sst2" in str(e.value) and "squad" in str(e.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml("not-a-recipe-name")


def test_load_yaml_reports_duplicates_under_the_file_name(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("lr: 1\nlr: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:2: the key 'lr' appears twice"):
        load_yaml(p)


def test_bare_name_means_the_packaged_recipe(tmp_path, monkeypatch):
    packaged, _ = load_yaml(str(recipes.path("sst2")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sst2").write_text("steps: 1\n")  # a file named like the recipe: ignored
    assert load_yaml("sst2")[0] == packaged
    assert packaged["dataset"] == "stanfordnlp/sst2"
    # "sst2.yaml" with no such file here is the packaged recipe too
    assert load_yaml("sst2.yaml")[0] == packaged


def test_name_that_is_both_recipe_and_file_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sst2.yaml").write_text("steps: 1\n")
    with pytest.raises(ConfigError, match=r"names both the packaged recipe and a file") as e:
        load_yaml("sst2.yaml")
    assert "-c sst2 " in str(e.value) and "-c ./sst2.yaml" in str(e.value)
    # a path with a folder part is always the file
    assert load_yaml("./sst2.yaml") == ({"steps": 1}, {"steps": 1})


def test_a_key_that_is_a_list_is_a_config_error():
    with pytest.raises(ConfigError, match="a key must be a name, not a list"):
        strict_yaml("? [1, 2]\n: x\n", "r.yaml")
