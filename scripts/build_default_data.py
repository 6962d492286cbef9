#!/usr/bin/env python
"""Build the embedded default sentiment task from the vaderSentiment 3.3.2 sdist.

Usage::

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python scripts/build_default_data.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

The sdist ships ``additional_resources/hutto_ICWSM_2014.tar.gz`` whose
``movieReviewSnippets_GroundTruth.txt`` (UTF-8, CRLF, tab separated
``ID<TAB>MEAN-RATING<TAB>TEXT``) holds 10,605 Rotten Tomatoes sentences with mean
human ratings in [-4, 4]. This script labels them by the sign of the rating,
drops zeros, collapses whitespace, removes duplicate texts and writes a fixed,
platform independent train/dev/test split (ordering by sha256 of the text, no
RNG) plus ``MANIFEST.json`` and ``README.md`` into ``mezo_ckpt/data/sentiment``.
The output is byte-for-byte reproducible; ``--check`` compares instead of writing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SOURCE_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SOURCE_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
LICENSE_MEMBER = "vaderSentiment-3.3.2/LICENSE.txt"

LABELS = ("negative", "positive")
SPLIT_SIZES = {"test": 1000, "dev": 500}  # per split, half of each label
SPLIT_ORDER = ("train", "dev", "test")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mezo_ckpt" / "data" / "sentiment"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def text_key(text: str) -> str:
    """Ordering key of one example: sha256 of its UTF-8 text."""
    return sha256_bytes(text.encode("utf-8"))


def read_sources(sdist: Path) -> tuple[bytes, str]:
    """Return (ground-truth file bytes, MIT license text) after verifying hashes."""
    blob = sdist.read_bytes()
    got = sha256_bytes(blob)
    if got != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {got} != pinned {SDIST_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as outer:
        inner_blob = _member_bytes(outer, INNER_TAR)
        license_text = _member_bytes(outer, LICENSE_MEMBER).decode("utf-8")
    with tarfile.open(fileobj=io.BytesIO(inner_blob), mode="r:gz") as inner:
        data = _member_bytes(inner, SOURCE_MEMBER)
    got = sha256_bytes(data)
    if got != SOURCE_SHA256:
        raise SystemExit(f"{SOURCE_MEMBER}: sha256 {got} != pinned {SOURCE_SHA256}")
    return data, license_text


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    fh = tar.extractfile(name)
    if fh is None:
        raise SystemExit(f"{name} is not a regular file in the archive")
    return fh.read()


def parse_examples(data: bytes) -> tuple[list[dict], dict[str, int]]:
    """Parse, label, clean and deduplicate; return (examples, statistics)."""
    lines = data.decode("utf-8").splitlines()
    stats = Counter(raw_lines=len(lines))
    by_text: dict[str, dict] = {}
    conflicting: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        sid, score_s, raw = line.split("\t")
        score = float(score_s)
        text = " ".join(raw.split())
        if score == 0.0 or not text:
            stats["dropped_zero_or_empty"] += 1
            continue
        label = "positive" if score > 0 else "negative"
        prev = by_text.get(text)
        if prev is not None:
            stats["dropped_duplicate"] += 1
            if prev["label"] != label:
                conflicting.add(text)
            continue
        by_text[text] = {"id": f"mr{int(sid):05d}", "text": text, "label": label, "score": score}
    for text in conflicting:  # duplicates whose ratings disagree in sign: drop all copies
        del by_text[text]
        stats["dropped_conflicting"] += 1
    return list(by_text.values()), dict(stats)


def split_examples(examples: list[dict]) -> dict[str, list[dict]]:
    """Stratified deterministic split: per label, ordered by sha256(text)."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_ORDER}
    for label in LABELS:
        pool = [e for e in examples if e["label"] == label]
        pool.sort(key=lambda e: text_key(e["text"]))
        start = 0
        for name in ("test", "dev"):
            n = SPLIT_SIZES[name] // len(LABELS)
            splits[name].extend(pool[start : start + n])
            start += n
        splits["train"].extend(pool[start:])
    for rows in splits.values():
        rows.sort(key=lambda e: text_key(e["text"]))
    return splits


def to_jsonl(rows: list[dict]) -> bytes:
    """Serialise rows as UTF-8 JSON lines with ``\\n`` endings."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def build(sdist: Path) -> dict[str, bytes]:
    """Return the content of every output file, keyed by file name."""
    data, license_text = read_sources(sdist)
    examples, stats = parse_examples(data)
    splits = split_examples(examples)
    files = {f"{name}.jsonl": to_jsonl(rows) for name, rows in splits.items()}
    manifest = {
        "task": "sentiment",
        "labels": list(LABELS),
        "source": {
            "package": "vaderSentiment==3.3.2",
            "sdist": SDIST_NAME,
            "sdist_sha256": SDIST_SHA256,
            "member": SOURCE_MEMBER,
            "member_sha256": SOURCE_SHA256,
        },
        "stats": {**stats, "kept": len(examples)},
        "files": {
            f"{name}.jsonl": {
                "sha256": sha256_bytes(files[f"{name}.jsonl"]),
                "count": len(splits[name]),
                "labels": dict(sorted(Counter(r["label"] for r in splits[name]).items())),
            }
            for name in SPLIT_ORDER
        },
    }
    files["MANIFEST.json"] = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    files["README.md"] = render_readme(manifest, license_text).encode("utf-8")
    return files


def render_readme(manifest: dict, license_text: str) -> str:
    """Provenance / attribution README for the data folder."""
    st = manifest["stats"]
    rows = "\n".join(
        f"| `{name}` | {info['count']} | {info['labels'].get('positive', 0)} | "
        f"{info['labels'].get('negative', 0)} | `{info['sha256']}` |"
        for name, info in manifest["files"].items()
    )
    license_block = "\n".join("    " + ln if ln else "" for ln in license_text.strip().splitlines())
    return f"""# Default sentiment task (binary, Rotten Tomatoes sentences)

Generated by `scripts/build_default_data.py`; do not edit by hand.

## Source

- Package: **vaderSentiment 3.3.2** (C.J. Hutto), PyPI sdist `{SDIST_NAME}`,
  sha256 `{SDIST_SHA256}`.
- File: `{INNER_TAR.split("/", 1)[1]}` -> `{SOURCE_MEMBER}`,
  sha256 `{SOURCE_SHA256}`.
- Content: 10,605 sentence-level snippets from rottentomatoes.com reviews, each with
  the mean of at least 20 human sentiment ratings on a [-4, +4] scale. According to
  the dataset README the snippets derive from the movie-review data of Pang & Lee
  (2004); the sentences appear to be those of the Rotten Tomatoes sentence-polarity
  data (Pang & Lee, 2005, 10,662 sentences), which also underlies SST.

Please cite:

> Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for
> Sentiment Analysis of Social Media Text. Eighth International Conference on
> Weblogs and Social Media (ICWSM-14). Ann Arbor, MI, June 2014.

> Pang, B. & Lee, L. (2004). A Sentimental Education: Sentiment Analysis Using
> Subjectivity Summarization Based on Minimum Cuts. Proceedings of ACL 2004.

> Pang, B. & Lee, L. (2005). Seeing stars: Exploiting class relationships for
> sentiment categorization with respect to rating scales. Proceedings of ACL 2005.

## Processing

1. Decode UTF-8, split lines (CRLF), parse `ID<TAB>MEAN-RATING<TAB>TEXT`.
2. Label = `positive` if the mean rating > 0, `negative` if < 0; ratings equal to 0
   are dropped ({st.get("dropped_zero_or_empty", 0)} rows).
3. Whitespace is collapsed to single spaces and stripped (the source has runs of
   spaces where dashes were lost). No other text normalisation (e.g. `''` quotes
   are kept as in the source).
4. Identical texts are deduplicated keeping the first (lowest ID) occurrence and its
   score ({st.get("dropped_duplicate", 0)} rows dropped); texts whose copies disagree in
   label are dropped entirely ({st.get("dropped_conflicting", 0)} such texts).
5. Split, per label, in order of `sha256(text.encode("utf-8"))`: the first 500 go to
   `test`, the next 250 to `dev`, the rest to `train` (so dev/test are exactly
   balanced). Rows in each file are ordered by the same hash. No RNG is involved.

Each line: `{{"id": "mr<source ID, 5 digits>", "text": str, "label": "positive" |
"negative", "score": float (mean rating)}}`.

## Files

{st["kept"]} examples kept of {st["raw_lines"]} source rows.

| file | count | positive | negative | sha256 |
|---|---|---|---|---|
{rows}

`MANIFEST.json` records the same hashes and counts (checked by the tests).

## License

The data is redistributed from the vaderSentiment package, released under the MIT
license (reproduced below). The sentences themselves are short excerpts of
professional film reviews collected from rottentomatoes.com by Pang & Lee for
research use; they are widely redistributed for research (e.g. SST, GLUE SST-2).


{license_block}
"""


def _same(path: Path, blob: bytes) -> bool:
    return path.is_file() and path.read_bytes() == blob


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdist", type=Path, help=f"path to {SDIST_NAME}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = ap.parse_args(argv)
    files = build(args.sdist)
    if args.check:
        bad = [n for n, b in files.items() if not _same(args.out / n, b)]
        for name in bad:
            print(f"differs: {args.out / name}", file=sys.stderr)
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (args.out / name).write_bytes(blob)
        print(f"wrote {args.out / name} ({len(blob)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
