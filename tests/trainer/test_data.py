"""mezo_ckpt.trainer.data: data files as people have them, origins, subsets, fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mezo_ckpt.errors import DataError
from mezo_ckpt.trainer.data import (
    EVAL_SUBSET_SEED,
    SUFFIXES,
    Split,
    fingerprint,
    load_file,
    map_columns,
)

ROWS = [
    {"text": "good film", "label": "pos"},
    {"text": "très mauvais ☹", "label": "neg"},
    {"text": 'a "quoted", word', "label": "pos"},
]


def jsonl(path: Path, rows, *, blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


def split_of(n: int, name: str = "dev") -> Split:
    return Split(name, [{"i": i} for i in range(n)], [f"f.jsonl:{i + 1}" for i in range(n)])


# ----------------------------------------------------------------------------- formats


def test_jsonl(tmp_path):
    p = jsonl(tmp_path / "train.jsonl", ROWS)
    s = load_file(p)
    assert s.name == "train"
    assert s.examples == ROWS
    assert s.origins == [f"{p}:1", f"{p}:2", f"{p}:3"]
    assert len(s) == 3


def test_jsonl_blank_lines_keep_line_numbers(tmp_path):
    p = jsonl(tmp_path / "t.jsonl", ROWS, blank_lines=True)
    s = load_file(p, name="dev")
    assert s.examples == ROWS
    assert s.origins == [f"{p}:1", f"{p}:3", f"{p}:5"]
    assert s.name == "dev"


def test_jsonl_byte_order_mark_and_crlf(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\r\n{"text": "b"}\r\n')
    assert load_file(p).examples == [{"text": "a"}, {"text": "b"}]


def test_upper_case_suffix(tmp_path):
    p = jsonl(tmp_path / "T.JSONL", ROWS[:1])
    assert load_file(p).examples == ROWS[:1]


@pytest.mark.parametrize(
    "lines, line, why",
    [
        (['{"a": 1}', '{"a": 2', '{"a": 3}'], 2, "not valid JSON"),
        (['{"a": 1}', "", "[1, 2]"], 3, "each line must be a JSON object"),
        (['"text"'], 1, "each line must be a JSON object"),
        (['{"a": 1}', "{'a': 2}"], 2, "not valid JSON"),
        (['{"a": 1} trailing'], 1, "not valid JSON"),
    ],
)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, lines, line, why):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=why) as e:
        load_file(p)
    assert str(e.value).startswith(f"{p}:{line}: ")


def test_json_list(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), "utf-8")
    s = load_file(p)
    assert s.examples == ROWS
    assert s.origins == [f"{p}[0]", f"{p}[1]", f"{p}[2]"]


def test_json_data_layout(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"version": 2, "data": ROWS}))
    assert load_file(p).examples == ROWS


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"a": 1}', "must hold a list of objects"),
        ('{"data": "x"}', "must hold a list of objects"),
        ("[1, 2]", "must hold a list of objects"),
        ('[{"a": 1}, 2]', "must hold a list of objects"),
        ('"rows"', "must hold a list of objects"),
    ],
)
def test_json_wrong_structure(tmp_path, text, why):
    p = tmp_path / "t.json"
    p.write_text(text)
    with pytest.raises(DataError, match=why):
        load_file(p)


def test_json_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    with pytest.raises(DataError) as e:
        load_file(p)
    assert str(e.value).startswith(f"{p}:3: not valid JSON")


def test_csv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        'text,label\ngood film,pos\n"très mauvais ☹",neg\n"a ""quoted"", word",pos\n', "utf-8"
    )
    s = load_file(p)
    assert s.examples == ROWS
    assert s.origins == [f"{p}:2", f"{p}:3", f"{p}:4"]


def test_csv_values_are_text(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nhello,1\n")
    assert load_file(p).examples == [{"text": "hello", "label": "1"}]


def test_csv_excel_bom_and_crlf(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufefftext,label\r\nbonjour,pos\r\n".encode())
    s = load_file(p)
    assert s.examples == [{"text": "bonjour", "label": "pos"}]  # not "\ufefftext"


def test_csv_multiline_field_origin_is_its_last_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('text,label\n"line one\nline two",pos\nx,neg\n')
    s = load_file(p)
    assert s.examples[0]["text"] == "line one\nline two"
    assert s.origins == [f"{p}:3", f"{p}:4"]


def test_csv_blank_lines_are_skipped(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\n\na,pos\n\nb,neg\n")
    s = load_file(p)
    assert [r["text"] for r in s.examples] == ["a", "b"]
    assert s.origins == [f"{p}:3", f"{p}:5"]


def test_csv_too_many_values_names_the_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\na,pos\nb,neg,extra\n")
    with pytest.raises(DataError, match="more values than the header has columns") as e:
        load_file(p)
    assert str(e.value).startswith(f"{p}:3: ")


def test_csv_too_few_values_names_the_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\na,pos\nonly text\n")
    with pytest.raises(DataError) as e:
        load_file(p)
    assert str(e.value).startswith(f"{p}:3: ")


def test_tsv(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("sentence\tlabel\nit's fine, really\t1\nnot, good\t0\n")
    s = load_file(p)
    assert s.examples == [
        {"sentence": "it's fine, really", "label": "1"},
        {"sentence": "not, good", "label": "0"},
    ]
    assert s.origins == [f"{p}:2", f"{p}:3"]


def test_tsv_extra_tab(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("sentence\tlabel\na\t1\tstray\n")
    with pytest.raises(DataError, match=f"{p}:2: more values"):
        load_file(p)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "t.parquet"
    table = pa.table(
        {
            "text": [r["text"] for r in ROWS],
            "label": [1, 0, 1],
            "options": [["a", "b"], ["c", "d"], ["e", "f"]],
        }
    )
    pq.write_table(table, p)
    s = load_file(p)
    assert s.examples[1] == {"text": "très mauvais ☹", "label": 0, "options": ["c", "d"]}
    assert type(s.examples[0]["label"]) is int
    assert s.origins == [f"{p}[row 0]", f"{p}[row 1]", f"{p}[row 2]"]


@pytest.mark.parametrize("layout", ["stream", "file"])
def test_arrow(tmp_path, layout):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc

    p = tmp_path / "t.arrow"
    table = pa.table({"text": ["x", "y"], "label": ["pos", "neg"]})
    if layout == "stream":
        with open(p, "wb") as f, ipc.new_stream(f, table.schema) as w:
            w.write_table(table)
    else:
        feather.write_feather(table, p)
    s = load_file(p)
    assert s.examples == [{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}]


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_unreadable_table(tmp_path, suffix):
    pytest.importorskip("pyarrow")
    p = tmp_path / f"t{suffix}"
    p.write_bytes(b"this is not a table at all")
    with pytest.raises(DataError, match=f"not a readable {suffix[1:]} file"):
        load_file(p)


def test_every_suffix_is_read(tmp_path):
    assert SUFFIXES == (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow")


# ----------------------------------------------------------------------------- refusals


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_file(tmp_path / "nope.jsonl")


def test_folder_is_not_a_data_file(tmp_path):
    d = tmp_path / "data.jsonl"
    d.mkdir()
    with pytest.raises(DataError, match="data file not found"):
        load_file(d)


@pytest.mark.parametrize("name", ["t.txt", "t.xlsx", "t", "t.jsonl.gz"])
def test_unsupported_suffix_lists_the_supported(tmp_path, name):
    p = tmp_path / name
    p.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match="unsupported data format") as e:
        load_file(p)
    assert ".jsonl" in str(e.value) and ".parquet" in str(e.value)


@pytest.mark.parametrize(
    "name, text",
    [("t.jsonl", ""), ("t.jsonl", "\n\n  \n"), ("t.csv", "text,label\n"), ("t.json", "[]")],
)
def test_no_examples(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DataError, match="no examples"):
        load_file(p)


@pytest.mark.parametrize("name", ["t.jsonl", "t.json", "t.csv", "t.tsv"])
def test_not_utf8(tmp_path, name):
    p = tmp_path / name
    p.write_bytes("text\nchâteau\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_file(p)


# ----------------------------------------------------------------------------- head, subset


def test_limit_and_head(tmp_path):
    p = jsonl(tmp_path / "t.jsonl", [{"i": i} for i in range(10)])
    s = load_file(p, limit=3)
    assert [e["i"] for e in s.examples] == [0, 1, 2]
    assert s.origins == [f"{p}:1", f"{p}:2", f"{p}:3"]
    full = load_file(p)
    assert full.head(None) is full
    assert full.head(100).examples == full.examples
    assert len(full.head(1)) == 1


def test_where_beyond_the_origins():
    s = Split("test", [{"a": 1}, {"a": 2}])
    assert s.where(0) == "test example 1"
    assert s.where(1) == "test example 2"
    assert split_of(3).where(2) == "f.jsonl:3"


def test_subset_is_a_fixed_random_subset_in_file_order():
    s = split_of(100)
    sub = s.subset(10)
    idx = [e["i"] for e in sub.examples]
    # pinned: evaluations stay comparable across runs, seeds and versions
    assert idx == [3, 5, 19, 24, 26, 39, 46, 47, 49, 53]
    assert idx == sorted(idx) and len(set(idx)) == 10
    assert idx != list(range(10))  # not the head: not biased by how the file is sorted
    assert sub.origins == [f"f.jsonl:{i + 1}" for i in idx]
    assert sub.name == "dev"
    assert EVAL_SUBSET_SEED == 0x65766C


def test_subset_is_deterministic_and_ignores_global_seeds():
    import random

    import numpy as np

    s = split_of(50)
    random.seed(1)
    np.random.seed(1)
    a = s.subset(7)
    random.seed(2)
    np.random.seed(2)
    b = s.subset(7)
    assert a.examples == b.examples and a.origins == b.origins


def test_subset_depends_on_positions_not_contents():
    a = Split("dev", [{"x": i} for i in range(30)])
    b = Split("dev", [{"y": -i} for i in range(30)])
    pick_a = [e["x"] for e in a.subset(5).examples]
    pick_b = [-e["y"] for e in b.subset(5).examples]
    assert pick_a == pick_b
    assert a.subset(5).origins == [f"dev example {i + 1}" for i in pick_a]


def test_subset_of_everything_or_nothing_is_the_split():
    s = split_of(5)
    assert s.subset(5) is s
    assert s.subset(6) is s
    assert s.subset(None) is s
    assert s.subset(0) is s


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_the_canonical_json():
    ex = [{"text": "é", "label": "pos"}]
    expected = hashlib.sha256('{"label": "pos", "text": "é"}\n'.encode()).hexdigest()
    assert fingerprint(ex) == expected
    assert fingerprint([]) == hashlib.sha256(b"").hexdigest()


def test_fingerprint_ignores_key_order_but_not_rows():
    a = [{"text": "x", "label": 1}, {"text": "y", "label": 0}]
    b = [{"label": 1, "text": "x"}, {"label": 0, "text": "y"}]
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(a[::-1])
    assert fingerprint(a) != fingerprint(a[:1])
    assert fingerprint([{"label": 1}]) != fingerprint([{"label": "1"}])
    assert fingerprint([{"t": "a b"}]) != fingerprint([{"t": "a  b"}])


def test_fingerprint_of_a_file_is_stable_across_formats(tmp_path):
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    j = load_file(jsonl(tmp_path / "t.jsonl", rows))
    c = tmp_path / "t.csv"
    c.write_text("text,label\ngood,pos\nbad,neg\n")
    assert fingerprint(j.examples) == fingerprint(load_file(c).examples)
    assert fingerprint(j.examples) == fingerprint(load_file(tmp_path / "t.jsonl").examples)


def test_fingerprint_of_values_json_cannot_hold():
    import datetime

    d = datetime.date(2024, 1, 2)
    assert fingerprint([{"d": d}]) == fingerprint([{"d": "2024-01-02"}])


# ----------------------------------------------------------------------------- map_columns


def test_map_columns():
    s = Split("train", [{"sentence": "hi", "gold": 1}], ["f:1"])
    out = map_columns(s, {"text": "sentence", "label": "gold"})
    assert out.examples == [{"sentence": "hi", "gold": 1, "text": "hi", "label": 1}]
    assert out.origins == ["f:1"] and out.name == "train"
    assert s.examples == [{"sentence": "hi", "gold": 1}]  # the input is not changed


def test_map_columns_reads_the_original_row():
    # swapping two columns reads both from the row as it was
    s = Split("train", [{"a": 1, "b": 2}])
    assert map_columns(s, {"a": "b", "b": "a"}).examples == [{"a": 2, "b": 1}]


def test_map_columns_empty_is_the_split():
    s = split_of(2)
    assert map_columns(s, {}) is s


def test_map_columns_missing_column_names_the_example():
    s = Split("train", [{"sentence": "a"}, {"text": "b"}], ["t.jsonl:1", "t.jsonl:2"])
    with pytest.raises(DataError) as e:
        map_columns(s, {"text": "sentence"})
    msg = str(e.value)
    assert msg.startswith("t.jsonl:2: no column 'sentence' (for text=sentence)")
    assert "it has ['text']" in msg


def test_tsv_has_no_quoting(tmp_path):
    """A TSV field may start with a quote (a quoted sentence) without swallowing lines."""
    p = tmp_path / "d.tsv"
    p.write_text('text\tlabel\n"Great," she said.\tpos\nbad\tneg\n', encoding="utf-8")
    split = load_file(p)
    assert [r["text"] for r in split.examples] == ['"Great," she said.', "bad"]
    assert [r["label"] for r in split.examples] == ["pos", "neg"]


# ----------------------------------------------------------------------------- k-shot


def labelled(n: int) -> Split:
    rows = [{"text": f"review {i}", "label": ("pos", "neg", "mid")[i % 3]} for i in range(n)]
    return Split("train", rows, [f"t.jsonl:{i + 1}" for i in range(n)])


def test_a_k_shot_draw_is_balanced_disjoint_and_in_file_order():
    from mezo_ckpt.trainer.data import k_shot

    train, dev, draw = k_shot(labelled(60), 4, 13, "label")
    for split in (train, dev):
        labels = [ex["label"] for ex in split.examples]
        assert sorted(labels) == sorted(["pos", "neg", "mid"] * 4)
    assert not set(draw.train_rows) & set(draw.dev_rows)
    assert draw.train_rows == sorted(draw.train_rows) and draw.dev_rows == sorted(draw.dev_rows)
    assert train.origins == [f"t.jsonl:{i + 1}" for i in draw.train_rows]
    assert train.drawn is draw and draw.info()["k"] == 4 and draw.info()["seed"] == 13


def test_a_k_shot_draw_depends_on_the_seed_and_the_examples_not_their_order():
    from mezo_ckpt.trainer.data import k_shot

    split = labelled(60)
    a = k_shot(split, 4, 13, "label")
    assert k_shot(split, 4, 13, "label")[2] == a[2]  # the same draw, every time
    assert k_shot(split, 4, 21, "label")[2] != a[2]
    shuffled = Split("train", split.examples[::-1], split.origins[::-1])
    b = k_shot(shuffled, 4, 13, "label")
    key = lambda s: sorted(ex["text"] for ex in s.examples)  # noqa: E731
    assert key(b[0]) == key(a[0]) and key(b[1]) == key(a[1])


def test_the_k_shot_draw_is_pinned_on_the_built_in_data():
    """The same rows on every machine and Python version (sha256 ordering, no RNG): a
    change here changes which examples every k-shot run trained on."""
    from mezo_ckpt.data import load_split
    from mezo_ckpt.trainer.data import k_shot

    split = Split("train", load_split("train"))
    train, _, draw = k_shot(split, 16, 13, "label")
    assert draw.train_rows[:5] == [179, 257, 715, 1114, 1406]
    assert draw.dev_rows[:3] == [52, 77, 340]
    assert [ex["id"] for ex in train.examples[:3]] == ["mr04600", "mr07892", "mr06152"]
    assert k_shot(split, 16, 21, "label")[2].train_rows[:2] == [804, 1151]


def test_a_class_too_small_for_the_draw_is_named():
    from mezo_ckpt.trainer.data import k_shot

    with pytest.raises(DataError, match="class 'mid' has 3 training examples; the draw needs 8"):
        k_shot(labelled(9), 4, 13, "label")
    with pytest.raises(DataError, match="the train split has 9"):
        k_shot(labelled(9), 5, 13, None)
    train, dev, _ = k_shot(labelled(9), 2, 0, None)  # no classes: K examples each
    assert len(train) == 2 and len(dev) == 2
