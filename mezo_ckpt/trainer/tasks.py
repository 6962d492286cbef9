"""Prompted tasks: data loading, templates, candidate scoring and MeZO's losses.

Classification: each example is rendered with a template and scored against every label
word of a verbalizer by its (length-normalised) log-likelihood at the answer position;
the loss is cross-entropy over those scores (MeZO's loss). Multiple choice: the same with
per-example options. The non-differentiable "accuracy" objective uses 1 - accuracy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mezo_ckpt.errors import ConfigError, DataError

Example = dict[str, Any]


# ----------------------------------------------------------------------------- data


def load_examples(path: str | Path, *, limit: int | None = None) -> list[Example]:
    """Read examples from a .jsonl / .json (list) / .csv / .tsv file.

    Raises:
        DataError: missing file, unreadable rows, wrong structure.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    rows: list[Example] = []
    try:
        if suffix == ".jsonl":
            with open(p, encoding="utf-8") as f:
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
        elif suffix == ".json":
            obj = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
                raise DataError(f"{p}: a .json data file must hold a list of objects")
            rows = obj
        elif suffix in (".csv", ".tsv"):
            with open(p, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise DataError(
                f"{p}: unsupported data format {suffix!r} (use .jsonl, .json, .csv, .tsv)"
            )
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e.msg})") from None
    if not rows:
        raise DataError(f"{p}: no examples")
    return rows[:limit] if limit else rows


def data_fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the canonical JSON of the examples (what the run actually saw)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------- tasks


def _template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as e:
        raise ConfigError(f"bad prompt template {template!r}: {e}") from None


@dataclass
class Encoded:
    """A scoring batch: one row per (example, candidate)."""

    input_ids: torch.Tensor  # [R, S] left-padded
    attention_mask: torch.Tensor  # [R, S]
    cand_len: torch.Tensor  # [R] candidate token count (tokens at the end of the row)
    n_cands: list[int]  # candidates per example
    gold: torch.Tensor  # [E] index of the correct candidate
    single_token: bool  # every candidate is one token: score from the last position


@dataclass
class PromptTask:
    """A prompted classification or multiple-choice task.

    Attributes:
        template: Python format string over example fields, e.g. ``"{text} It was"``.
        verbalizer: label value -> continuation word (classification), e.g.
            ``{"positive": " great", "negative": " terrible"}``. Empty for multiple choice.
        label_field: field holding the label (classification) or the answer index / text
            (multiple choice).
        options_field: field holding the list of options (multiple choice only).
        option_template: how an option is rendered as the continuation (``" {option}"``).
    """

    template: str
    verbalizer: dict[str, str] = field(default_factory=dict)
    label_field: str = "label"
    options_field: str | None = None
    option_template: str = " {option}"
    max_length: int = 256

    def __post_init__(self) -> None:
        if not self.template:
            raise ConfigError("the prompt template is empty")
        _template_fields(self.template)
        if self.options_field is None and len(self.verbalizer) < 2:
            raise ConfigError("classification needs a verbalizer with at least two labels")

    @property
    def kind(self) -> str:
        return "multiple_choice" if self.options_field else "classification"

    def validate(self, examples: Sequence[Example], where: str) -> None:
        """Check that every example has the fields the task needs (clear error if not)."""
        need = set(_template_fields(self.template)) | {self.label_field}
        if self.options_field:
            need.add(self.options_field)
        for i, ex in enumerate(examples):
            missing = sorted(need - set(ex))
            if missing:
                raise DataError(
                    f"{where}: example {i} lacks field(s) {missing}; it has "
                    f"{sorted(ex)}. Set the field names in the config "
                    "(template, label_field, options_field)."
                )
            if not self.options_field and str(ex[self.label_field]) not in self.verbalizer:
                raise DataError(
                    f"{where}: example {i} has label {ex[self.label_field]!r}, "
                    f"which the verbalizer does not map (labels: "
                    f"{sorted(self.verbalizer)})"
                )

    def candidates(self, ex: Example) -> tuple[list[str], int]:
        """(continuation strings, index of the correct one) for one example."""
        if self.options_field:
            opts = ex[self.options_field]
            if not isinstance(opts, list) or len(opts) < 2:
                raise DataError(f"{self.options_field} must be a list of at least two options")
            ans = ex[self.label_field]
            if isinstance(ans, int) and not isinstance(ans, bool):
                gold = ans
            elif str(ans).isdigit():
                gold = int(ans)
            elif ans in opts:
                gold = opts.index(ans)
            else:
                raise DataError(f"answer {ans!r} is neither an index nor one of the options")
            if not 0 <= gold < len(opts):
                raise DataError(f"answer index {gold} is out of range for {len(opts)} options")
            return [self.option_template.format(option=o) for o in opts], gold
        labels = list(self.verbalizer)
        return [self.verbalizer[k] for k in labels], labels.index(str(ex[self.label_field]))

    def check_tokens(self, tokenizer) -> dict[str, list[int]]:
        """Tokenize the verbalizer words; refuse words that tokenize to nothing or collide."""
        out: dict[str, list[int]] = {}
        for label, word in self.verbalizer.items():
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(
                    f"verbalizer word {word!r} for label {label!r} is empty after tokenization"
                )
            out[label] = ids
        firsts = [tuple(v) for v in out.values()]
        if len(set(firsts)) != len(firsts):
            raise ConfigError(f"verbalizer words tokenize identically: {out}")
        return out

    def encode(self, tokenizer, examples: Sequence[Example]) -> Encoded:
        """Tokenize prompts and candidates into a left-padded scoring batch."""
        rows: list[list[int]] = []
        cand_len: list[int] = []
        n_cands: list[int] = []
        gold: list[int] = []
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        single = True
        for ex in examples:
            prompt = self.template.format(**ex)
            p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            cands, g = self.candidates(ex)
            c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in cands]
            if any(len(c) == 0 for c in c_ids):
                raise ConfigError(f"a candidate tokenizes to nothing: {cands}")
            single = single and all(len(c) == 1 for c in c_ids)
            n_cands.append(len(cands))
            gold.append(g)
            for c in c_ids:
                keep = self.max_length - len(c)
                rows.append(p_ids[-keep:] + c)
                cand_len.append(len(c))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return Encoded(ids, mask, torch.tensor(cand_len), n_cands, torch.tensor(gold), single)


def score_candidates(model, enc: Encoded) -> torch.Tensor:
    """Length-normalised log-likelihood of each candidate: a float tensor [rows].

    With single-token candidates each prompt runs once and every candidate is read from
    the last position's logits; otherwise each (prompt + candidate) row runs and the
    candidate's tokens are scored by teacher forcing.
    """
    ids, mask = enc.input_ids, enc.attention_mask
    dev = next(model.parameters()).device
    if enc.single_token:
        # One row per candidate; keep the first row of each example, read all candidates.
        starts = torch.tensor([0] + enc.n_cands[:-1]).cumsum(0)
        p_ids = ids[starts][:, :-1]
        p_mask = mask[starts][:, :-1]
        logits = _forward(model, p_ids.to(dev), p_mask.to(dev), keep=1)[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        ex_of_row = torch.repeat_interleave(torch.arange(len(starts)), torch.tensor(enc.n_cands))
        return logp[ex_of_row.to(dev), ids[:, -1].to(dev)].cpu()
    lmax = int(enc.cand_len.max())
    logits = _forward(model, ids.to(dev), mask.to(dev), keep=lmax + 1).float()
    # logits[:, j] predicts the token at position S - lmax - 1 + j + 1
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last lmax tokens
    tok_lp = logp.gather(-1, ids[:, -lmax:].to(dev).unsqueeze(-1)).squeeze(-1)  # [R, lmax]
    clen = enc.cand_len.to(dev)
    valid = torch.arange(lmax, device=dev).unsqueeze(0) >= (lmax - clen).unsqueeze(1)
    return ((tok_lp * valid).sum(-1) / clen).cpu()


def _forward(model, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False
    )
    return out.logits


def cross_entropy(scores: torch.Tensor, enc: Encoded) -> torch.Tensor:
    """Mean cross-entropy over each example's candidate scores (MeZO's loss); a
    differentiable tensor when ``scores`` is."""
    lo = 0
    terms = []
    for n, g in zip(enc.n_cands, enc.gold.tolist()):
        terms.append(-torch.log_softmax(scores[lo : lo + n].double(), 0)[g])
        lo += n
    return torch.stack(terms).mean()


def losses_from_scores(scores: torch.Tensor, enc: Encoded, objective: str) -> tuple[float, float]:
    """(loss, accuracy) of a batch from its candidate scores [rows].

    objective "ce": :func:`cross_entropy` (MeZO's loss); "accuracy": 1 - accuracy (the
    non-differentiable objective).
    """
    lo = 0
    correct = 0
    for n, g in zip(enc.n_cands, enc.gold.tolist()):
        correct += int(torch.argmax(scores[lo : lo + n])) == g
        lo += n
    acc = correct / len(enc.n_cands)
    return (float(cross_entropy(scores, enc)) if objective == "ce" else 1.0 - acc), acc
