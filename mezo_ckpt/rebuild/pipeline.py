"""The one rebuild: check the base, apply the edits tensor by tensor, verify, write.

Every command that rebuilds weights (``replay``, ``pull``, ``load``, ``diff``,
``apply-delta``, streamed replay, the trainer's repair of a resumed run) calls
:func:`rebuild` with a source and a sink; the base check, the adapter preparation, the
update of each tensor and the fingerprint check are written once, here and in the
modules it calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mezo_ckpt.core.hashing import Fingerprint
from mezo_ckpt.models.base import BaseCheck
from mezo_ckpt.rebuild.plan import Edit, Verdict, finite_rate
from mezo_ckpt.util.runtime import bars_wanted


@dataclass
class Outcome:
    """What a rebuild did and what it wrote (``output``: the sink's result)."""

    verdicts: list[Verdict]
    check: BaseCheck
    element_steps: int
    seconds: float
    output: Any
    streamed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        return self.verdicts[0]

    @property
    def rate(self) -> float:
        return finite_rate(self.element_steps, self.seconds)


def rebuild(
    edits: Edit | Sequence[Edit],
    source: Any,
    sink: Any,
    *,
    ignore_base_mismatch: bool = False,
    progress: bool = False,
    desc: str = "replay",
    on_progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Apply ``edits`` to the base ``source`` and hand the results to ``sink``.

    With one edit the sink gets the rebuilt tensors; with two (``diff``) it gets both
    states of each tensor, rebuilt from the same base tensor. ``progress`` draws a bar
    (on a terminal); ``on_progress`` is called with the element-steps of each tensor.

    Raises:
        BaseMismatchError: the base is not the one the edits were made from (nothing is
            written; what only a full read shows is caught before the output is renamed).
        VerificationError: a rebuilt state misses its recorded fingerprint.
    """
    from tqdm.auto import tqdm

    edits = [edits] if not isinstance(edits, Sequence) else list(edits)
    check = source.open(edits, ignore_mismatch=ignore_base_mismatch)
    names = sink.names(edits)
    trained = [set(e.trained) for e in edits]
    prints = [
        Fingerprint(e.trained) if e.needs_fingerprint or sink.wants_fingerprint else None
        for e in edits
    ]
    sizes = source.shapes(sorted(set().union(*trained)))
    total = sum(e.element_steps(sizes.get(n, 0)) for e in edits for n in e.trained)
    clone = len(edits) > 1 or sink.keeps_base
    done = 0
    t0 = time.perf_counter()
    with (
        tqdm(
            total=total,
            unit="el-step",
            unit_scale=True,
            desc=desc,
            disable=not bars_wanted(progress),
            leave=False,
        ) as bar,
        sink.staging(source),
    ):
        for name, base in source.tensors(names):
            outs = []
            for edit, want, fp in zip(edits, trained, prints):
                x = base.clone() if clone else base
                if name in want:
                    n = edit.apply(name, x)
                    done += n
                    bar.update(n)
                    if on_progress is not None:
                        on_progress(n)
                if fp is not None and fp.wants(name):
                    fp.add(name, x)
                outs.append(x)
            sink.take(name, base, outs)
        streamed = source.finish()
        if streamed is not None:
            check = streamed
        verdicts = [
            e.judge(fp.hexdigest() if fp is not None else None) for e, fp in zip(edits, prints)
        ]
        output = sink.close(source, edits, verdicts, check)
    seconds = time.perf_counter() - t0
    return Outcome(verdicts, check, done, seconds, output, streamed=source.streams)
