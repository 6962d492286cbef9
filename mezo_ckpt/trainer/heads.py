"""The logits a scoring pass needs, at inference memory, for any causal or masked LM.

Scoring reads a few positions (the last one, or the candidate's tokens) and often only a
few rows of the output layer (the label words). A model that is a decoder followed by an
output layer (``model.base_model`` and ``model.get_output_embeddings()``) is computed
here in those pieces: the decoder's hidden states of the positions needed (contiguous),
then the head on them, or only the candidates' rows of its weight; then the elementwise
transform some architectures apply to their logits (Gemma 2/3 soft-capping, Cohere's
scale, Granite's divisor, Falcon-H1's multiplier). Whether a model has that shape is
decided by what the model is, not by its name: the pieces must exist and must reproduce
the model's own logits on a probe batch (checked once per model); anything else goes
through the model's forward with ``logits_to_keep`` (when its forward takes it).

A masked LM (RoBERTa, BERT) is scored at its mask position: its prediction head (a
position-wise transform, then the output layer) runs on that position only, and when the
label words are all that is asked, the transform's output is multiplied by those words'
rows of the output layer (checked against the model's own logits once per model, like
the causal pieces).

Calling the head on contiguous hidden states also avoids a copy of the whole output layer
per sequence that torch's CPU ``linear`` makes for a strided bf16/fp16 input (a
``logits_to_keep`` slice of the hidden states): 781 MiB for 64 rows of a 100k-token
vocabulary, which made bf16 evaluations peak far above fp32 ones.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: Config attributes that rescale logits after the output layer: (name, how).
_SCALES = (
    ("logit_scale", "mul"),  # Cohere
    ("logits_scaling", "div"),  # Granite, MiniCPM3-style
    ("lm_head_multiplier", "mul"),  # Falcon-H1
)


@dataclass(frozen=True)
class LmCore:
    """A causal LM as decoder + output layer + elementwise logit transform."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    softcap: float | None = None
    scale: float | None = None  # multiply logits by this

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's transform of raw head outputs (elementwise, so exact on any subset
        of rows)."""
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """The decoder's last hidden states at the last ``keep`` positions, contiguous."""
        out = self.decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        )
        return out.last_hidden_state[:, -keep:].contiguous()

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """The model's logits at the last ``keep`` positions."""
        return self.finish(self.head(self.hidden(ids, mask, keep)))

    @property
    def rows_exact(self) -> bool:
        """Whether reading rows of the head's weight is the head (a plain linear layer)."""
        return type(self.head) is torch.nn.Linear


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _transform(config) -> tuple[float | None, float | None]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    scale = None
    for name, how in _SCALES:
        v = getattr(text, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in (0, 1):
            scale = (scale or 1.0) * (float(v) if how == "mul" else 1.0 / float(v))
    if not (isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0):
        cap = None
    return cap, scale


def _candidate(model) -> LmCore | None:
    """The pieces, if the model has them (not yet checked against its forward)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_output_embeddings"):
        return None
    head = model.get_output_embeddings()
    decoder = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Module) or not isinstance(decoder, torch.nn.Module):
        return None
    if decoder is model:
        return None
    cap, scale = _transform(config)
    return LmCore(decoder, head, cap, float(scale) if scale is not None else None)


def _agrees(model, core: LmCore) -> bool:
    """Whether the pieces reproduce the model's own logits on a small probe batch."""
    vocab = getattr(core.head, "out_features", None) or getattr(model.config, "vocab_size", 2)
    devices = [p.device for p in model.parameters() if p.device.type != "meta"]
    dev = devices[0] if devices else torch.device("cpu")  # offloaded: hooks move inputs
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(2, min(int(vocab), 1000)), (2, 6), generator=g).to(dev)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding, as scoring batches have
    try:
        with torch.inference_mode():
            want = (
                model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions(mask),
                    use_cache=False,
                )
                .logits[:, -2:]
                .float()
            )
            got = core.logits(ids, mask, 2).float()
    except Exception:  # noqa: BLE001 - any mismatch in shape or signature: not this shape
        return False
    if got.shape != want.shape or not bool(torch.isfinite(want).all()):
        return False
    return _close(got, want, fp32=want.dtype == torch.float32 and got.dtype == torch.float32)


def _close(got: torch.Tensor, want: torch.Tensor, *, fp32: bool) -> bool:
    """``got`` reproduces ``want`` up to the rounding of the dtype it was computed in."""
    limit = (1e-3 if fp32 else 1e-2) * max(1.0, float(want.abs().max()))
    return float((got - want).abs().max()) <= limit


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NONE = object()


def lm_core(model) -> LmCore | None:
    """The model as decoder + head + transform when that reproduces its logits (checked
    once per model object), else None. A LoRA model's pieces are its inner model's (with
    the adapter layers in them); a prefix-tuned model has none (its virtual tokens enter
    through the peft model's forward)."""
    peft_cfg = getattr(model, "peft_config", None)
    if isinstance(peft_cfg, dict) and hasattr(model, "get_base_model"):
        if any(getattr(c, "is_prompt_learning", False) for c in peft_cfg.values()):
            return None
        model = model.get_base_model()
    return _checked_once(_CACHE, model, _candidate, _agrees)


def _checked_once(cache, model, find, agrees):
    """``find(model)`` if ``agrees(model, found)``, else None; decided once per model."""
    hit = cache.get(model)
    if hit is not None:
        return None if hit is _NONE else hit
    found = find(model)
    if found is not None and not agrees(model, found):
        found = None
    cache[model] = _NONE if found is None else found
    return found


@contextlib.contextmanager
def contiguous_head(model) -> Iterator[None]:
    """Within the block the model's output layer gets contiguous inputs, whatever calls it
    (``generate`` and ``logits_to_keep`` slice the hidden states; see the module's
    docstring for what a strided bf16 input costs)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        yield
        return
    handle = head.register_forward_pre_hook(_contiguous_input)
    try:
        yield
    finally:
        handle.remove()


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def takes_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def last_logits(model, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits at the last ``keep`` positions ([B, keep, V]) without logits for the
    others, through the decoder and head when the model has them."""
    core = lm_core(model)
    if core is not None:
        return core.logits(ids, mask, keep)
    kw = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
    with contiguous_head(model):
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False, **kw
        )
    return out.logits[:, -keep:]


# ----------------------------------------------------------------------------- masked LMs


@dataclass(frozen=True)
class MaskedHead:
    """A masked LM's prediction head: ``owner`` is the module the model calls on the
    encoder's hidden states (RoBERTa's ``lm_head``, BERT's ``cls``), ``out`` its output
    layer (rows = vocabulary, usually tied to the input embedding)."""

    owner: torch.nn.Module
    out: torch.nn.Linear


class _Features(Exception):
    """Carries the output layer's input out of a forward that need not go further."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__("features")
        self.x = x


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "peft_config") else model


def _masked_candidate(model) -> MaskedHead | None:
    inner = _unwrap(model)
    get = getattr(inner, "get_output_embeddings", None)
    out = get() if callable(get) else None
    if type(out) is not torch.nn.Linear:
        return None
    encoder = getattr(inner, "base_model", None)
    for _, child in inner.named_children():
        if child is not encoder and any(m is out for m in child.modules()):
            return MaskedHead(child, out)
    return None


@contextlib.contextmanager
def _at(owner: torch.nn.Module, pos: torch.Tensor) -> Iterator[None]:
    """Within the block the head sees one position per row (``pos``): [B, S, H] ->
    [B, 1, H]. The head is position-wise, so this is the head at those positions only."""

    def pick(module, args):
        x = args[0]
        rows = torch.arange(x.shape[0], device=x.device)
        return (x[rows, pos.to(x.device)].unsqueeze(1).contiguous(), *args[1:])

    handle = owner.register_forward_pre_hook(pick)
    try:
        yield
    finally:
        handle.remove()


def _stop(module, args):
    raise _Features(args[0])


def mask_features(
    model, head: MaskedHead, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """[B, H]: what the head's output layer receives at each row's mask position (the
    head's transform applied, the vocabulary never multiplied)."""
    handle = head.out.register_forward_pre_hook(_stop)
    try:
        with _at(head.owner, pos):
            model(input_ids=ids, attention_mask=mask)
    except _Features as f:
        return f.x[:, 0]
    finally:
        handle.remove()
    raise RuntimeError("the masked LM's forward never reached its output layer")


def mask_logits(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """[B, V]: the model's logits at each row's mask position, the head run there only
    when the model's head is checked (:func:`masked_head`), else read from all logits."""
    head = masked_head(model)
    if head is None:
        logits = model(input_ids=ids, attention_mask=mask).logits
        return logits[torch.arange(ids.shape[0], device=logits.device), pos.to(logits.device)]
    with _at(head.owner, pos):
        return model(input_ids=ids, attention_mask=mask).logits[:, 0]


def _masked_agrees(model, head: MaskedHead) -> bool:
    """Whether the head at the mask positions and the rows of its output layer reproduce
    the model's own logits on a small probe batch (right-padded, as masked rows are)."""
    vocab = head.out.out_features
    dev = head.out.weight.device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(2, min(int(vocab), 1000)), (2, 6), generator=g).to(dev)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    pos = torch.tensor([5, 2], device=dev)
    try:
        with torch.inference_mode():
            full = model(input_ids=ids, attention_mask=mask).logits
            want = full[torch.arange(2, device=dev), pos].float()
            x = mask_features(model, head, ids, mask, pos)
            got = torch.nn.functional.linear(x, head.out.weight, head.out.bias).float()
            with _at(head.owner, pos):
                picked = model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
    except Exception:  # noqa: BLE001 - any mismatch in shape or signature: not this shape
        return False
    if got.shape != want.shape or picked.shape != want.shape:
        return False
    if not bool(torch.isfinite(want).all()):
        return False
    fp32 = full.dtype == torch.float32
    return _close(got, want, fp32=fp32) and _close(picked, want, fp32=fp32)


_MASKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def masked_head(model) -> MaskedHead | None:
    """The masked LM's head as owner + output layer when reading the head at the mask
    positions, and only the label words' rows of its output layer, reproduces the
    model's logits (checked once per model object); else None (all logits are read)."""
    return _checked_once(_MASKED, model, _masked_candidate, _masked_agrees)
