"""Examples the way people have them: JSONL/JSON/CSV/TSV (Excel's byte-order mark too),
Parquet/Arrow files, and ``datasets`` datasets (a local folder, or a name already in the
datasets cache); every example remembers where it came from (``file:line``) so errors
point at it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mezo_ckpt.errors import DataError

Example = dict[str, Any]
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow")
#: Seed of the fixed evaluation subsets (the same for every run and seed).
EVAL_SUBSET_SEED = 0x65766C  # "evl"


@dataclass
class Split:
    """One split of a task's data."""

    name: str
    examples: list[Example]
    origins: list[str] = field(default_factory=list)  # "file:line" per example
    drawn: KShot | None = None  # the few-shot draw this split came from (train)
    unlabelled: int = 0  # examples left out for having no gold label (-1)

    def __len__(self) -> int:
        return len(self.examples)

    def where(self, i: int) -> str:
        return self.origins[i] if i < len(self.origins) else f"{self.name} example {i + 1}"

    def labelled(self, label_field: str) -> Split:
        """The split without examples labelled -1, the datasets' mark for "no gold
        label" (SNLI's unresolved pairs, GLUE's test splits); ``unlabelled`` counts them."""
        keep = [i for i, ex in enumerate(self.examples) if str(ex.get(label_field)) != "-1"]
        if len(keep) == len(self.examples):
            return self
        return self.take(keep, unlabelled=len(self.examples) - len(keep))

    def take(self, rows: Sequence[int], **changes: Any) -> Split:
        """The examples at ``rows`` (and their origins), in that order; ``changes`` set
        other fields of the new split (the rest are kept)."""
        return dataclasses.replace(
            self,
            examples=[self.examples[int(i)] for i in rows],
            origins=[self.where(int(i)) for i in rows],
            **changes,
        )

    def head(self, n: int | None) -> Split:
        if not n:
            return self
        return Split(self.name, self.examples[:n], self.origins[:n], unlabelled=self.unlabelled)

    def subset(self, k: int | None) -> Split:
        """A fixed random subset of ``k`` examples (in file order), so that evaluations
        are comparable across runs and not biased by how the file is sorted."""
        if not k or k >= len(self.examples):
            return self
        idx = np.sort(
            np.random.default_rng(EVAL_SUBSET_SEED).choice(
                len(self.examples), size=k, replace=False
            )
        )
        return self.take(idx, drawn=None)


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the canonical JSON of the examples (what the run actually saw)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class KShot:
    """A few-shot draw: which rows of the train split became the train and dev splits."""

    k: int
    seed: int
    train_rows: list[int]
    dev_rows: list[int]

    def info(self) -> dict[str, Any]:
        """What the header records (0-based row numbers in the train split)."""
        return {"k": self.k, "seed": self.seed, "train_rows": self.train_rows,
                "dev_rows": self.dev_rows}  # fmt: skip


def _draw_key(seed: int, ex: Example, i: int) -> tuple[bytes, int]:
    text = json.dumps(ex, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{seed}\n{text}".encode()).digest(), i


def k_shot(train: Split, k: int, seed: int, label_field: str | None) -> tuple[Split, Split, KShot]:
    """(train, dev, the draw): ``k`` examples per class (``label_field``'s values; None: the
    whole split is one class) for training and ``k`` more per class for the dev split,
    disjoint, each kept in file order.

    The draw orders each class by sha256(seed, the example's canonical JSON) and takes the
    first ``k`` and the next ``k``: the same examples on every machine, Python and numpy
    version, whatever order the file lists them in.

    Raises:
        DataError: a class has fewer than ``2 * k`` examples (naming it).
    """
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(train.examples):
        label = str(ex.get(label_field)) if label_field is not None else ""
        groups.setdefault(label, []).append(i)
    chosen, held = [], []
    for label in sorted(groups):
        rows = sorted(groups[label], key=lambda i: _draw_key(seed, train.examples[i], i))
        if len(rows) < 2 * k:
            what = f"class {label!r}" if label_field is not None else "the train split"
            raise DataError(
                f"--k-shot {k}: {what} has {len(rows)} training examples; the draw needs "
                f"{2 * k} ({k} to train on, {k} for the dev split)"
            )
        chosen += rows[:k]
        held += rows[k : 2 * k]
    chosen.sort()
    held.sort()

    draw = KShot(k, seed, chosen, held)
    return (
        train.take(chosen, name="train", drawn=draw),
        train.take(held, name="dev", drawn=None, unlabelled=0),
        draw,
    )


def _rows_jsonl(p: Path) -> tuple[list[Example], list[str]]:
    rows, origins = [], []
    with open(p, encoding="utf-8-sig") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{i}: each line must be a JSON object")
            rows.append(obj)
            origins.append(f"{p}:{i}")
    return rows, origins


def _rows_json(p: Path) -> tuple[list[Example], list[str]]:
    try:
        obj = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]  # {"data": [...]}, a common layout
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{p}: a .json data file must hold a list of objects")
    return obj, [f"{p}[{i}]" for i in range(len(obj))]


def _rows_csv(p: Path, delimiter: str) -> tuple[list[Example], list[str]]:
    # TSV has no quoting: a field may start with a quote character (a quoted sentence)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(p, encoding="utf-8-sig", newline="") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        rows, origins = [], []
        for row in reader:
            if None in row:
                raise DataError(
                    f"{p}:{reader.line_num}: more values than the header has columns "
                    f"({reader.fieldnames})"
                )
            if None in row.values():
                raise DataError(
                    f"{p}:{reader.line_num}: fewer values than the header has columns "
                    f"({reader.fieldnames})"
                )
            rows.append(dict(row))
            origins.append(f"{p}:{reader.line_num}")
    return rows, origins


def _rows_table(p: Path) -> tuple[list[Example], list[str]]:
    try:
        import pyarrow.feather as feather
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{p}: reading Parquet/Arrow needs pyarrow: pip install 'mezo-ckpt[data]'"
        ) from None
    try:
        if p.suffix.lower() == ".parquet":
            table = pq.read_table(p)
        else:
            try:
                with open(p, "rb") as f:
                    table = ipc.open_stream(f).read_all()
            except Exception:  # noqa: BLE001 - the file/feather layout instead
                table = feather.read_table(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise DataError(f"{p}: not a readable {p.suffix[1:]} file ({e})") from None
    rows = table.to_pylist()
    return rows, [f"{p}[row {i}]" for i in range(len(rows))]


def load_file(path: str | Path, *, name: str = "train", limit: int | None = None) -> Split:
    """Read one split from a data file.

    Raises:
        DataError: missing file, unreadable rows, wrong structure.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows, origins = _rows_jsonl(p)
        elif suffix == ".json":
            rows, origins = _rows_json(p)
        elif suffix in (".csv", ".tsv"):
            rows, origins = _rows_csv(p, "\t" if suffix == ".tsv" else ",")
        elif suffix in (".parquet", ".arrow"):
            rows, origins = _rows_table(p)
        else:
            raise DataError(f"{p}: unsupported data format {suffix!r} (use {', '.join(SUFFIXES)})")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e})") from None
    if not rows:
        raise DataError(f"{p}: no examples")
    return Split(name, rows, origins).head(limit)


def load_dataset_split(
    source: str,
    split: str,
    *,
    name: str,
    config: str | None = None,
    limit: int | None = None,
    required: bool = True,
) -> Split | None:
    """One split of a ``datasets`` dataset: a folder written by ``save_to_disk``, a folder
    of data files, or a dataset name (from the datasets cache when offline).

    Args:
        required: the user asked for this split; otherwise a missing split is None (a
            dataset without a validation split trains without dev evaluations).

    Raises:
        DataError: ``datasets`` is missing, the dataset or a required split does not exist.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(
            "--dataset needs the datasets library: pip install 'mezo-ckpt[data]'"
        ) from None
    p = Path(source).expanduser()
    try:
        if p.is_dir() and (
            (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()
        ):
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(str(p) if p.exists() else source, config)
    except FileNotFoundError as e:
        raise DataError(f"dataset {source!r} not found ({e})") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types (offline, config...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not load dataset {source!r}: {first[:300]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            if not required:
                return None
            raise DataError(
                f"dataset {source!r} has no split {split!r}; it has {sorted(ds)} "
                "(choose with --train-split / --dev-split / --test-split)"
            )
        ds = ds[split]
    elif name != "train":  # a single Dataset is the training data, never its own dev set
        if not required:
            return None
        raise DataError(
            f"dataset {source!r} is a single split (no {split!r}): pass --dev-file/--test-file "
            "or a DatasetDict with that split"
        )
    n = len(ds) if not limit else min(limit, len(ds))
    rows = [dict(ds[i]) for i in range(n)]
    if not rows:
        raise DataError(f"dataset {source!r} split {split!r} has no examples")
    return Split(name, rows, [f"{source}[{split}][{i}]" for i in range(n)])


def map_columns(split: Split, columns: Mapping[str, str]) -> Split:
    """``example[name] = row[column]`` for each ``name=column`` pair.

    Raises:
        DataError: a column is missing (naming the example and what it has).
    """
    if not columns:
        return split
    out = []
    for i, row in enumerate(split.examples):
        ex = dict(row)
        for name, col in columns.items():
            if col not in row:
                raise DataError(
                    f"{split.where(i)}: no column {col!r} (for {name}={col}); it has {sorted(row)}"
                )
            ex[name] = row[col]
        out.append(ex)
    return Split(split.name, out, split.origins)
