"""Scale-out on torch.distributed: data parallelism that exchanges only scalars.

``torchrun --nproc-per-node N --no-python mezo-ckpt train ...`` (or ``accelerate launch
--multi_gpu --num_processes N --no_python mezo-ckpt train ...``; without ``--multi_gpu``
accelerate starts one process) starts N copies; each finds its rank in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins one
process group (gloo on CPU, NCCL on GPU). Two ways to share a step:

* ``data`` (default): every rank evaluates every direction on its shard of the global
  batch (examples ``rank, rank + N, ...`` of the step's batch); the ranks all-reduce the
  loss *sums and counts* of all forwards of the step in one collective, so they compute
  the same coefficients and apply the same update;
* ``directions`` (n-SPSA across ranks): every rank evaluates its own directions
  (``j = rank, rank + N, ...``) on the whole batch; the same all-reduce gathers the
  losses of all directions.

Every rank holds identical weights: their fingerprints are compared at every evaluation
and the run stops with :class:`RankMismatchError` if they ever differ. Only rank 0
writes the trajectory, the log and the evaluations. A rank that dies makes the others'
next collective fail after ``timeout`` (the engine's own timeout), with a typed error;
rank 0's journal is resumable (a step's record is written only after the collective
that decides it).

Data parallelism is not bit-identical to one process with the same global batch: the
per-example losses come from forwards of other batch shapes (other kernel blockings)
and the sums are added in another order, so the losses agree to float tolerance and
the 13-bit coefficients almost always, but not provably, coincide. The trajectory is
exact either way: it records the coefficients the ranks applied.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mezo_ckpt.errors import DistributedError, MezoCkptError, RankMismatchError
from mezo_ckpt.trainer.config import DIST_MODES
from mezo_ckpt.trainer.tasks import LossTerms

MODES = DIST_MODES
#: Seconds a collective waits for a missing rank before failing (--dist-timeout).
DEFAULT_TIMEOUT_S = 300.0


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (0, 1, 0 if none)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or rank)
    return rank, world, local


class Dist:
    """This process's place in a run: rank 0 of 1 without a launcher."""

    def __init__(self, mode: str = "data", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown distributed mode {mode!r}; use {', '.join(MODES)}")
        self.mode = mode
        self.rank, self.world, self.local_rank = env_world()
        self.timeout_s = timeout_s
        self._owned = False
        self.backend: str | None = None
        if self.world > 1:
            import torch
            import torch.distributed as td

            if not td.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(self.local_rank)
                try:
                    td.init_process_group(
                        backend, timeout=datetime.timedelta(seconds=self.timeout_s)
                    )
                except Exception as e:  # noqa: BLE001 - rendezvous errors have many types
                    raise DistributedError(f"could not join the process group: {e}") from e
                self._owned = True
            self.backend = td.get_backend()

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """What the run says of its ranks ('' for a single process)."""
        if not self.active:
            return ""
        share = "batch" if self.mode == "data" else "n-SPSA directions"
        return f"data parallel: {self.world} ranks ({self.backend}), each a share of the {share}"

    def device(self, requested: str) -> str:
        """The device of this rank (its own GPU under NCCL)."""
        if self.active and self.backend == "nccl" and requested in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's examples of a step's batch (data mode), or all of them."""
        if not self.active or self.mode != "data":
            return idx
        return idx[self.rank :: self.world]

    def owns(self, direction: int) -> bool:
        return not self.active or self.mode != "directions" or direction % self.world == self.rank

    def _collective(self, what: str, fn):
        try:
            return fn()
        except MezoCkptError:
            raise
        except Exception as e:  # noqa: BLE001 - gloo/NCCL raise RuntimeError and friends
            raise DistributedError(
                f"rank {self.rank}: {what} failed ({type(e).__name__}: {str(e)[:300]}); a rank "
                "probably died. Rank 0's journal is resumable: start the same torchrun "
                "command with --resume"
            ) from e

    def reduce(self, terms: Sequence[LossTerms]) -> list[LossTerms]:
        """Sum each forward's loss terms over the ranks (one all-reduce per step)."""
        if not self.active:
            return list(terms)
        import torch
        import torch.distributed as td

        flat = torch.tensor(
            [[t.loss_sum, float(t.count), t.correct] for t in terms], dtype=torch.float64
        )
        if self.backend == "nccl":
            flat = flat.cuda()

        def run():
            td.all_reduce(flat, op=td.ReduceOp.SUM)
            return flat.cpu()

        out = self._collective("the loss all-reduce", run)
        return [LossTerms(float(r[0]), int(round(float(r[1]))), float(r[2])) for r in out]

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a few floats over the ranks (evaluation metrics)."""
        if not self.active:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(list(values), dtype=torch.float64)
        if self.backend == "nccl":
            t = t.cuda()

        def run():
            td.all_reduce(t, op=td.ReduceOp.SUM)
            return t.cpu().tolist()

        return self._collective("the metric all-reduce", run)

    def check_same(self, digest: str, step: int) -> None:
        """Stop if any rank's weights differ from rank 0's (fingerprints gathered)."""
        if not self.active:
            return
        import torch.distributed as td

        got: list[Any] = [None] * self.world
        self._collective("the fingerprint check", lambda: td.all_gather_object(got, digest))
        if len(set(got)) > 1:
            bad = [r for r, d in enumerate(got) if d != got[0]]
            raise RankMismatchError(
                f"at step {step} rank(s) {bad} hold other weights than rank 0 "
                f"({', '.join(d[:12] for d in got)}): the ranks diverged (non-deterministic "
                "hardware or a bug); stopping"
            )

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes on every rank (e.g. the journal being resumed)."""
        if not self.active:
            assert data is not None
            return data
        import torch.distributed as td

        box = [data if self.is_main else None]
        self._collective("broadcasting the journal", lambda: td.broadcast_object_list(box, src=0))
        assert box[0] is not None
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            self._collective("a barrier", td.barrier)

    def close(self) -> None:
        if self._owned:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
            self._owned = False
