"""Prompted tasks: templates, encoding, candidate scoring, generation and their metrics.

* Classification: each example is rendered with a template and scored against every
  label word of a verbalizer by its (length-normalised) log-likelihood at the answer
  position; the loss is cross-entropy over those scores (MeZO's loss).
* Multiple choice: the same with per-example options.
* Masked LMs (RoBERTa, BERT; MeZO's medium models): the template holds a ``{mask}`` slot
  where the tokenizer's mask token goes; each label word (one token) is scored by its
  logit at the mask position, the loss is cross-entropy over those logits, accuracy the
  argmax over them (prompt-based fine-tuning, as LM-BFF and MeZO do it).
* Generation: a template plus a target field; the loss is the teacher-forced,
  length-normalised cross-entropy of the target tokens (MeZO's loss for SQuAD/DROP), and
  evaluation decodes greedily and reports exact match and token F1 with SQuAD's
  normalisation (several reference answers allowed).

Objectives (what a forward pass measures): ``ce`` for every task; ``accuracy`` for
classification and multiple choice; ``f1`` / ``exact_match`` for generation (on greedy
generations under the perturbation: non-differentiable); or a user function
(:mod:`mezo_ckpt.trainer.objectives`).

With single-token candidates, CE and accuracy depend on the candidates' logits only (the
log-partition over the vocabulary cancels), so for the usual decoder-only models the
scorer runs the transformer without its output layer and multiplies the last hidden
state by the candidates' rows of the output matrix: the (tied) output embedding is never
materialised, perturbed or multiplied in full.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mezo_ckpt.errors import ConfigError, DataError
from mezo_ckpt.trainer.data import Example, Split
from mezo_ckpt.trainer.heads import (
    LmCore,
    contiguous_head,
    last_logits,
    lm_core,
    mask_features,
    mask_logits,
    masked_head,
)

RowsFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def template_fields(template: str) -> list[str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as e:
        raise ConfigError(f"bad prompt template {template!r}: {e}") from None
    # "{options[0]}" and "{ex.name}" use the field "options" / "ex"
    return [re.split(r"[.\[]", f, maxsplit=1)[0] for f in fields]


@dataclass
class Encoded:
    """A scoring batch: one row per (example, candidate); for generation, one per example.

    Attributes:
        input_ids, attention_mask: [R, S], left-padded prompt + candidate (or target).
        cand_len: [R] candidate (target) tokens at the end of each row.
        cand_ids: [R] the candidate token of each row when every candidate is one token.
        n_cands: candidates per example (1 for generation).
        gold: [E] index of the correct candidate (0 for generation).
        prompt_ids, prompt_mask: [E, P] left-padded prompts alone (generation).
        references: per example, the accepted answers (generation).
        labels: per example, the candidate names (label or option index).
        examples: the examples themselves (for user objectives).
        truncated: prompts cut from the left to fit ``max_length``.
        mask_pos: [E] the mask position of each (right-padded) row of a masked-LM batch
            (one row per example; ``cand_ids`` are the label words per example).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cand_len: torch.Tensor
    n_cands: list[int]
    gold: torch.Tensor
    single_token: bool
    kind: str = "classification"
    cand_ids: torch.Tensor | None = None
    prompt_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    references: list[list[str]] = field(default_factory=list)
    labels: list[list[Any]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    truncated: int = 0
    mask_pos: torch.Tensor | None = None

    @property
    def n_examples(self) -> int:
        return len(self.n_cands)


@dataclass
class PromptTask:
    """A prompted classification, multiple-choice or generation task.

    Attributes:
        template: Python format string over example fields, e.g. ``"{text} It was"``.
        verbalizer: label value -> continuation word (classification), e.g.
            ``{"positive": " great", "negative": " terrible"}``.
        label_field: field holding the label (classification) or the answer index / text
            (multiple choice).
        options_field: field holding the list of options (multiple choice).
        option_template: how an option is rendered as the continuation (``" {option}"``).
        target_field: field holding the answer (a string or a list of strings) of a
            generation task.
        chat_template: wrap the rendered prompt in the tokenizer's chat template.
        masked: the model is a masked LM: the template's ``{mask}`` slot is where the
            label word is predicted.
    """

    template: str
    verbalizer: dict[str, str] = field(default_factory=dict)
    label_field: str = "label"
    options_field: str | None = None
    option_template: str = " {option}"
    target_field: str | None = None
    target_template: str = " {target}"
    max_length: int = 256
    chat_template: bool = False
    max_new_tokens: int = 16
    stop: tuple[str, ...] = ("\n",)
    masked: bool = False

    def __post_init__(self) -> None:
        if not self.template:
            raise ConfigError("the prompt template is empty")
        fields = template_fields(self.template)
        if self.masked:
            if self.kind != "classification":
                raise ConfigError(
                    "a masked LM scores label words at its mask: use a classification task "
                    "(--verbalizer), not multiple choice or generation"
                )
            if fields.count("mask") != 1:
                raise ConfigError(
                    f"template {self.template!r}: a masked LM's prompt needs one {{mask}} slot "
                    "where the label word goes, e.g. --template '{text} It was{mask}.'"
                )
            if self.chat_template:
                raise ConfigError("--chat-template is for instruct causal LMs, not masked LMs")
        if self.kind == "classification" and len(self.verbalizer) < 2:
            raise ConfigError("classification needs a verbalizer with at least two labels")
        if "{option}" not in self.option_template and self.kind == "multiple_choice":
            raise ConfigError("option_template must contain {option}")
        if self.kind == "generation" and "{target}" not in self.target_template:
            raise ConfigError("target_template must contain {target}")

    @property
    def kind(self) -> str:
        if self.target_field:
            return "generation"
        return "multiple_choice" if self.options_field else "classification"

    def resolved(self) -> dict[str, Any]:
        """The task as recorded in the header (so cards and tools need no defaults)."""
        out: dict[str, Any] = {"kind": self.kind, "template": self.template}
        out["chat_template"] = self.chat_template
        out["max_length"] = self.max_length
        if self.masked:
            out["masked_lm"] = True
        if self.kind == "classification":
            out.update(verbalizer=dict(self.verbalizer), label_field=self.label_field)
        elif self.kind == "multiple_choice":
            out.update(
                options_field=self.options_field,
                option_template=self.option_template,
                label_field=self.label_field,
            )
        else:
            out.update(
                target_field=self.target_field,
                target_template=self.target_template,
                max_new_tokens=self.max_new_tokens,
                stop=list(self.stop),
            )
        return out

    # ------------------------------------------------------------------ validation
    def validate(self, split: Split) -> None:
        """Check that every example has what the task needs (naming file and line)."""
        need = set(template_fields(self.template)) - ({"mask"} if self.masked else set())
        if self.kind == "generation":
            need.add(str(self.target_field))
        else:
            need.add(self.label_field)
        if self.options_field:
            need.update(self._option_fields())
        for i, ex in enumerate(split.examples):
            missing = sorted(need - set(ex))
            if missing:
                hint = (
                    " ({mask} is the label slot of a masked LM's prompt; a causal LM "
                    "continues the prompt instead)"
                    if "mask" in missing
                    else ""
                )
                raise DataError(
                    f"{split.where(i)}: lacks field(s) {missing}; it has {sorted(ex)}. Set "
                    "the field names (--template, --label-field, --options-field, "
                    f"--target-field) or map columns with --columns NAME=COLUMN{hint}"
                )
            try:
                if self.kind == "classification":
                    if str(ex[self.label_field]) not in self.verbalizer:
                        raise DataError(
                            f"label {ex[self.label_field]!r} is not mapped by the verbalizer "
                            f"(labels: {sorted(self.verbalizer)})"
                        )
                elif self.kind == "multiple_choice":
                    self.candidates(ex)
                else:
                    self.references(ex)
            except DataError as e:
                raise DataError(f"{split.where(i)}: {e}") from None

    def _option_fields(self) -> list[str]:
        return [f.strip() for f in str(self.options_field).split(",") if f.strip()]

    def candidates(self, ex: Example) -> tuple[list[str], int, list[Any]]:
        """(continuation strings, index of the correct one, candidate labels)."""
        if self.options_field:
            fields = self._option_fields()
            opts = ex[fields[0]] if len(fields) == 1 else [ex[f] for f in fields]
            if not isinstance(opts, list) or len(opts) < 2:
                raise DataError(f"{self.options_field} must be a list of at least two options")
            ans = ex[self.label_field]
            if isinstance(ans, list) and ans:  # several accepted answers (ReCoRD): the first
                ans = ans[0]
            if isinstance(ans, int) and not isinstance(ans, bool):
                gold = ans
            elif str(ans).strip().isdigit() and str(ans).strip() not in map(str, opts):
                gold = int(str(ans).strip())
            elif ans in opts:
                gold = opts.index(ans)
            else:
                raise DataError(f"answer {ans!r} is neither an index nor one of the options")
            if not 0 <= gold < len(opts):
                raise DataError(f"answer index {gold} is out of range for {len(opts)} options")
            return (
                [self.option_template.format(option=o) for o in opts],
                gold,
                list(range(len(opts))),
            )
        labels = list(self.verbalizer)
        return (
            [self.verbalizer[k] for k in labels],
            labels.index(str(ex[self.label_field])),
            labels,
        )

    def references(self, ex: Example) -> list[str]:
        """Accepted answers of a generation example (a string or a list of strings)."""
        v = ex[str(self.target_field)]
        if isinstance(v, dict):  # SQuAD's {"text": [...]}, DROP's {"spans": [...]}
            v = next((v[k] for k in ("text", "spans") if isinstance(v.get(k), list)), v)
        refs = [v] if isinstance(v, str) else v
        if (
            not isinstance(refs, list)
            or not refs
            or not all(isinstance(r, str) and r.strip() for r in refs)
        ):
            raise DataError(
                f"{self.target_field} must be a non-empty string or list of strings, not {v!r}"
            )
        return refs

    def check_tokens(self, tokenizer) -> list[str]:
        """Tokenize the label words; refuse words that tokenize to nothing or collide.

        Returns:
            warnings (label words of several tokens: slower, scored by their mean).
        """
        if self.kind != "classification":
            return []
        if self.masked and getattr(tokenizer, "mask_token_id", None) is None:
            raise ConfigError("this masked LM's tokenizer has no mask token")
        ids: dict[str, tuple[int, ...]] = {}
        warn = []
        for label, word in self.verbalizer.items():
            t = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not t:
                raise ConfigError(
                    f"verbalizer word {word!r} for label {label!r} is empty after tokenization"
                )
            ids[label] = tuple(t)
            if len(t) > 1 and self.masked:
                pieces = [tokenizer.decode([x]) for x in t]
                raise ConfigError(
                    f"label word {word!r} ({label}) is {len(t)} tokens {pieces}: a masked LM "
                    "predicts one token at its mask; pick a one-token word (RoBERTa's words "
                    "take a leading space: ' great')"
                )
            if len(t) > 1:
                pieces = [tokenizer.decode([x]) for x in t]
                warn.append(
                    f"label word {word!r} ({label}) is {len(t)} tokens {pieces}: it is scored "
                    "by the mean log-likelihood of its tokens, which needs one forward row per "
                    "label (single-token words such as ' great' are cheaper)"
                )
        if len(set(ids.values())) != len(ids):
            raise ConfigError(f"verbalizer words tokenize identically: {ids}")
        return warn

    # ------------------------------------------------------------------ encoding
    def text(self, ex: Example, mask: str = "") -> str:
        """The prompt of one example as text (``mask`` fills a masked LM's slot)."""
        if self.masked:
            return self.template.format_map({**ex, "mask": mask})
        return self.template.format(**ex)

    def render(self, tokenizer, ex: Example) -> list[int]:
        """Token ids of the prompt of one example (chat-wrapped if asked)."""
        text = self.text(ex)
        if self.chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("--chat-template: this tokenizer has no chat template")
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode(self, tokenizer, examples: Sequence[Example]) -> Encoded:
        """Tokenize prompts and candidates (or targets) into a left-padded batch (a
        masked LM's: one right-padded row per example, see :meth:`encode_masked`)."""
        if self.masked:
            return self.encode_masked(tokenizer, examples)
        rows: list[list[int]] = []
        cand_len: list[int] = []
        cand_ids: list[int] = []
        n_cands: list[int] = []
        gold: list[int] = []
        prompts: list[list[int]] = []
        refs: list[list[str]] = []
        labels: list[list[Any]] = []
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        single = self.kind != "generation"
        truncated = 0
        for ex in examples:
            p_ids = self.render(tokenizer, ex)
            if self.kind == "generation":
                r = self.references(ex)
                refs.append(r)
                conts, g, labs = [self.target_template.format(target=r[0])], 0, [0]
            else:
                conts, g, labs = self.candidates(ex)
            c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in conts]
            if any(len(c) == 0 for c in c_ids):
                raise ConfigError(f"a candidate tokenizes to nothing: {conts}")
            if any(len(c) >= self.max_length for c in c_ids):
                raise ConfigError(
                    f"a candidate/answer is {max(map(len, c_ids))} tokens, not less than "
                    f"max_length={self.max_length}: raise --max-length"
                )
            single = single and all(len(c) == 1 for c in c_ids)
            n_cands.append(len(conts))
            gold.append(g)
            labels.append(labs)
            longest = max(len(c) for c in c_ids)
            if len(p_ids) + longest > self.max_length:
                truncated += 1
            keep_prompt = self.max_length - longest
            prompts.append(p_ids[-keep_prompt:])
            for c in c_ids:
                rows.append(p_ids[-keep_prompt:] + c)
                cand_len.append(len(c))
                cand_ids.append(c[-1])
        ids, mask = _pad(rows, pad)
        enc = Encoded(
            ids,
            mask,
            torch.tensor(cand_len),
            n_cands,
            torch.tensor(gold),
            single,
            kind=self.kind,
            cand_ids=torch.tensor(cand_ids) if single else None,
            references=refs,
            labels=labels,
            examples=list(examples),
            truncated=truncated,
        )
        if self.kind == "generation":
            enc.prompt_ids, enc.prompt_mask = _pad(prompts, pad)
        return enc

    def encode_masked(self, tokenizer, examples: Sequence[Example]) -> Encoded:
        """A masked LM's batch: each prompt with the mask token in its slot and the
        tokenizer's special tokens, one right-padded row per example (BERT's positions
        count from the left), its mask position, and the label words' ids."""
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ConfigError("this masked LM's tokenizer has no mask token")
        labels = list(self.verbalizer)
        words = [
            tokenizer(self.verbalizer[k], add_special_tokens=False)["input_ids"] for k in labels
        ]
        if any(len(w) != 1 for w in words):
            self.check_tokens(tokenizer)  # says which word is not one token
        word_ids = [w[0] for w in words]
        rows: list[list[int]] = []
        pos: list[int] = []
        gold: list[int] = []
        truncated = 0
        for ex in examples:
            text = self.text(ex, tokenizer.mask_token)
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            at = [i for i, t in enumerate(ids) if t == mask_id]
            if len(at) != 1:
                raise DataError(
                    f"a prompt holds {len(at)} mask tokens, not one (does the example's text "
                    f"contain {tokenizer.mask_token!r}?): {text[:120]!r}"
                )
            ids, cut = _keep_mask(ids, at[0], max(3, self.max_length))
            truncated += cut
            rows.append(ids)
            pos.append(ids.index(mask_id))
            gold.append(labels.index(str(ex[self.label_field])))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids, attention = _pad(rows, pad, left=False)
        n = len(examples)
        return Encoded(
            input_ids,
            attention,
            torch.ones(n * len(labels), dtype=torch.long),
            [len(labels)] * n,
            torch.tensor(gold),
            True,
            cand_ids=torch.tensor(word_ids * n),
            labels=[labels] * n,
            examples=list(examples),
            truncated=truncated,
            mask_pos=torch.tensor(pos),
        )


def _keep_mask(ids: list[int], at: int, limit: int) -> tuple[list[int], bool]:
    """``ids`` cut to ``limit`` tokens around its mask at ``at``: the first and last
    tokens (the tokenizer's <s> and </s>) and the mask stay; text goes from before the
    mask first (as causal prompts are cut from the left), then from after it."""
    over = len(ids) - limit
    if over <= 0:
        return ids, False
    before = min(over, max(0, at - 1))
    after = over - before
    cut = ids[:1] + ids[1 + before :]
    if after:
        cut = cut[: len(cut) - 1 - after] + cut[-1:]
    return cut, True


def _pad(
    rows: list[list[int]], pad: int, *, left: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``rows`` padded to one width, on the left (a causal LM's
    last position is then every row's last) or on the right (a masked LM's)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        at = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, at] = torch.tensor(r)
        mask[i, at] = 1
    return ids, mask


# ----------------------------------------------------------------------------- scoring


def head_model(model) -> LmCore | None:
    """The decoder and output layer candidate-only scoring reads rows of, or None (see
    :mod:`mezo_ckpt.trainer.heads`: decided by what the model is, checked once)."""
    core = lm_core(model)
    return core if core is not None and core.rows_exact else None


def head_rows_supported(model) -> bool:
    """Whether candidate-only scoring reproduces this model's logits exactly."""
    return head_model(model) is not None


def score_candidates(
    model, enc: Encoded, rows: RowsFn | None = None, bias_rows: RowsFn | None = None
) -> torch.Tensor:
    """A score per row (float [R]); higher is better, comparable within an example.

    Single-token candidates: with ``rows`` (a function giving the output layer's rows for
    token ids, perturbed or not; ``bias_rows`` the same for its bias) and a supported
    model, the candidates' logits; otherwise their log-probabilities from the last
    position. Several tokens: the length-normalised log-likelihood of each candidate by
    teacher forcing. A masked LM's batch: the label words' logits at the mask.
    """
    ids, mask = enc.input_ids, enc.attention_mask
    dev = next(model.parameters()).device
    if enc.mask_pos is not None:
        return _masked_scores(model, enc, rows, bias_rows)
    if enc.single_token:
        # One row per candidate; keep the first row of each example, read all candidates.
        starts = torch.tensor([0] + enc.n_cands[:-1]).cumsum(0)
        p_ids = ids[starts][:, :-1].to(dev)
        p_mask = mask[starts][:, :-1].to(dev)
        ex_of_row = torch.repeat_interleave(torch.arange(len(starts)), torch.tensor(enc.n_cands))
        assert enc.cand_ids is not None
        core = head_model(model) if rows is not None else None
        if core is not None:
            assert rows is not None
            head = core.head
            h = core.hidden(p_ids, p_mask, 1)[:, -1]  # [E, H]
            uniq, inv = torch.unique(enc.cand_ids, return_inverse=True)
            w = rows(head, uniq)  # [U, H]
            logits = h.to(w.dtype) @ w.t()
            if head.bias is not None:
                logits = logits + _bias(head, uniq, bias_rows)
            logits = core.finish(logits)
            return logits.float()[ex_of_row.to(dev), inv.to(dev)].cpu()
        logits = last_logits(model, p_ids, p_mask, 1)[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        return logp[ex_of_row.to(dev), enc.cand_ids.to(dev)].cpu()
    lmax = int(enc.cand_len.max())
    logits = last_logits(model, ids.to(dev), mask.to(dev), lmax + 1).float()
    # logits[:, j] predicts the token at position S - lmax - 1 + j + 1
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last lmax tokens
    tok_lp = logp.gather(-1, ids[:, -lmax:].to(dev).unsqueeze(-1)).squeeze(-1)  # [R, lmax]
    clen = enc.cand_len.to(dev)
    valid = torch.arange(lmax, device=dev).unsqueeze(0) >= (lmax - clen).unsqueeze(1)
    return ((tok_lp * valid).sum(-1) / clen).cpu()


def _bias(head: torch.nn.Module, uniq: torch.Tensor, bias_rows: RowsFn | None) -> torch.Tensor:
    if bias_rows is not None:
        return bias_rows(head, uniq)
    return head.bias.detach()[uniq.to(head.bias.device)]


def _masked_scores(
    model, enc: Encoded, rows: RowsFn | None, bias_rows: RowsFn | None
) -> torch.Tensor:
    """The label words' logits at each example's mask: with ``rows`` and a checked head,
    the head's transform at the mask times the words' rows of its output layer (the
    vocabulary is never multiplied); else read from the logits at the mask."""
    assert enc.mask_pos is not None and enc.cand_ids is not None
    dev = next(model.parameters()).device
    ids, att, pos = enc.input_ids.to(dev), enc.attention_mask.to(dev), enc.mask_pos.to(dev)
    ex_of_row = torch.repeat_interleave(torch.arange(enc.n_examples), torch.tensor(enc.n_cands))
    uniq, inv = torch.unique(enc.cand_ids, return_inverse=True)
    head = masked_head(model) if rows is not None else None
    if head is not None:
        assert rows is not None
        x = mask_features(model, head, ids, att, pos)  # [E, H]
        w = rows(head.out, uniq)  # [U, H]
        logits = x.to(w.dtype) @ w.t()
        if head.out.bias is not None:
            logits = logits + _bias(head.out, uniq, bias_rows)
    else:
        logits = mask_logits(model, ids, att, pos)[:, uniq.to(dev)]
    return logits.float()[ex_of_row.to(dev), inv.to(dev)].cpu()


@dataclass
class LossTerms:
    """Sums over a batch, so shards of a batch (data parallelism) add up exactly."""

    loss_sum: float  # sum over examples of the objective's per-example loss
    count: int  # examples
    correct: float  # correct predictions (classification), or summed F1 (generation)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.count)

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms(
            self.loss_sum + other.loss_sum, self.count + other.count, self.correct + other.correct
        )


def cross_entropy_terms(scores: torch.Tensor, enc: Encoded) -> torch.Tensor:
    """Per-example cross-entropy over each example's candidate scores (MeZO's loss); for
    generation, the negative mean log-likelihood of the target. Differentiable when
    ``scores`` is (the backprop baseline uses it)."""
    if enc.kind == "generation":
        return -scores.double()
    lo = 0
    terms = []
    for n, g in zip(enc.n_cands, enc.gold.tolist()):
        terms.append(-torch.log_softmax(scores[lo : lo + n].double(), 0)[g])
        lo += n
    return torch.stack(terms)


def cross_entropy(scores: torch.Tensor, enc: Encoded) -> torch.Tensor:
    """Mean of :func:`cross_entropy_terms`."""
    return cross_entropy_terms(scores, enc).mean()


def predictions(scores: torch.Tensor, enc: Encoded) -> list[Any]:
    """The predicted label (classification) or option index (multiple choice) per example."""
    out = []
    lo = 0
    for n, labs in zip(enc.n_cands, enc.labels):
        out.append(labs[int(torch.argmax(scores[lo : lo + n]))])
        lo += n
    return out


def n_correct(scores: torch.Tensor, enc: Encoded) -> int:
    lo = 0
    correct = 0
    for n, g in zip(enc.n_cands, enc.gold.tolist()):
        correct += int(torch.argmax(scores[lo : lo + n])) == g
        lo += n
    return correct


def loss_terms(scores: torch.Tensor, enc: Encoded, objective: str) -> LossTerms:
    """The batch's loss terms under ``ce`` or ``accuracy`` from candidate scores."""
    e = enc.n_examples
    if enc.kind == "generation":
        ce = cross_entropy_terms(scores, enc)
        return LossTerms(float(ce.sum()), e, 0.0)
    correct = n_correct(scores, enc)
    if objective == "accuracy":
        return LossTerms(float(e - correct), e, float(correct))
    return LossTerms(float(cross_entropy_terms(scores, enc).sum()), e, float(correct))


# ----------------------------------------------------------------------------- generation


def generate(model, tokenizer, enc: Encoded, *, max_new_tokens: int, stop: Sequence[str]):
    """Greedy answers of a generation batch (stop strings and EOS end an answer)."""
    assert enc.prompt_ids is not None and enc.prompt_mask is not None
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    from transformers import StoppingCriteriaList

    width = enc.prompt_ids.shape[1]
    with torch.inference_mode(), contiguous_head(model):
        out = model.generate(
            input_ids=enc.prompt_ids.to(dev),
            attention_mask=enc.prompt_mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
            stopping_criteria=StoppingCriteriaList([_StopInAnswer(tokenizer, stop, width)]),
        )
    new = out[:, width:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [cut_at_stop(t, stop) for t in texts]


class _StopInAnswer:
    """Ends a row's greedy generation once its decoded answer holds a stop string.

    Only the generated tokens are decoded (a stop string spanning the prompt's end never
    counts), the same way the answer is decoded and cut afterwards: a stop string seen in
    an answer so far is at the same place in the whole answer (decoding is prefix-stable
    up to an unfinished character at the end), so the cut text is the one a run to
    ``max_new_tokens`` gives, with fewer forwards."""

    def __init__(self, tokenizer, stop: Sequence[str], width: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.width = width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stop:
            texts = self.tokenizer.batch_decode(
                input_ids[:, self.width :], skip_special_tokens=True
            )
            for i, t in enumerate(texts):
                done[i] = any(s in t for s in self.stop)
        return done


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s and s in text:
            cut = min(cut, text.index(s))
    return text[:cut]


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1, the best over the references."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for r in references:
        ref = normalize_answer(r).split()
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = Counter(pred) & Counter(ref)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred), same / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best
