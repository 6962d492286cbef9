"""Dev accuracy against forward passes: plain MeZO beside the other estimators, same budget.

Every method trains with ``mezo_ckpt.trainer.train`` (so every run writes a trajectory that
replays bit for bit) on the same data, seeds and forward budget; a forward pass is one
batch of ``--batch-size`` examples through the model (MeZO: 2 per step; one-sided and
FZOO with n directions: n + 1). Dev accuracy is measured every ``--eval-every-forwards``
forwards (evaluation forwards are not counted). Backprop + AdamW on the same batches is
the reference the field compares with; its steps are a forward and a backward each, so
it is plotted against steps x 3 forward-equivalents and reported by steps.

Tasks:

* ``sentiment``: the embedded default (SmolLM2-135M-Instruct, movie-review sentiment);
* ``toy``: a 2-layer Llama built from a config (tests/tinymodels.py) on the toy
  good/bad-word task: seconds per run, a second landscape for the same comparison.

The target of issue 14: reach plain MeZO's dev accuracy at the end of the budget (its
100-step value for budget 200) with at most a third of its forward passes.

    PYTHONPATH=. python benchmarks/bench_convergence.py --task toy              # ~1 min
    PYTHONPATH=. python benchmarks/bench_convergence.py --task sentiment --backprop \\
        --plot convergence.png                                              # ~2 h, 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from _machine import cpu_model  # noqa: E402


@dataclass
class Method:
    name: str
    settings: dict
    label: str

    @property
    def forwards_per_step(self) -> int:
        n = self.settings.get("n_directions", 1)
        return 2 * n if self.settings.get("estimator", "spsa") == "spsa" else n + 1


@dataclass
class Curve:
    method: str
    seed: int
    points: list[tuple[int, float]] = field(default_factory=list)  # (forwards, dev acc)
    seconds: float = 0.0
    bytes_per_step: float = 0.0  # file bytes / steps (header included)
    record_bytes: int = 0  # one step record before compression

    def at(self, forwards: int) -> float | None:
        got = [a for f, a in self.points if f <= forwards]
        return got[-1] if got else None


def methods(task: str) -> dict[str, Method]:
    """The compared methods; learning rates chosen per task (see --help of each)."""
    # FZOO's lr: probed on 12 steps of the default task (2e-3: dev 0.61, 5e-3: 0.655,
    # 1e-2: 0.64, 2e-2: diverged), 2026-12-01; MeZO's is the default job's.
    if task == "sentiment":
        mezo_lr, fzoo_lr, eps = 3e-5, 5e-3, 1e-3
    else:
        mezo_lr, fzoo_lr, eps = 3e-3, 2e-2, 1e-2
    return {
        "mezo": Method("mezo", dict(lr=mezo_lr, eps=eps), f"MeZO (SPSA, lr {mezo_lr:g})"),
        "mezo-momentum": Method(
            "mezo-momentum",
            dict(lr=mezo_lr / 3, eps=eps, momentum=0.8, momentum_window=8),
            f"MeZO + momentum 0.8, window 8 (lr {mezo_lr / 3:g})",
        ),
        "one-sided": Method(
            "one-sided",
            dict(lr=2 * mezo_lr, eps=eps, estimator="one-sided", n_directions=4),
            f"one-sided, 4 directions (lr {2 * mezo_lr:g})",
        ),
        "fzoo": Method(
            "fzoo",
            dict(lr=fzoo_lr, eps=eps, estimator="fzoo", n_directions=4, z="rademacher"),
            f"FZOO-style, 4 Rademacher directions (lr {fzoo_lr:g})",
        ),
        "fzoo-momentum": Method(
            "fzoo-momentum",
            dict(
                lr=fzoo_lr / 2,
                eps=eps,
                estimator="fzoo",
                n_directions=4,
                z="rademacher",
                momentum=0.5,
                momentum_window=4,
            ),
            f"FZOO-style + momentum 0.5, window 4 (lr {fzoo_lr / 2:g})",
        ),
    }


def task_settings(task: str, tmp: Path) -> tuple[dict, dict | None]:
    """(train() settings, in-memory data or None) of a task."""
    if task == "sentiment":
        return dict(eval_examples=200), None
    from tinymodels import save_tiny, toy_sentiment

    folder = tmp / "tiny-llama"
    if not folder.exists():
        save_tiny(folder, "llama")
    data = {"train": toy_sentiment(400, 0), "dev": toy_sentiment(200, 1)}
    settings = dict(
        model=str(folder),
        template="{text} =",
        verbalizer={"pos": "+", "neg": "-"},
        eval_examples=200,
    )
    return settings, data


def run_method(m: Method, seed: int, task: str, args, tmp: Path) -> Curve:
    from mezo_ckpt.trainer import train
    from mezo_ckpt.trajectory import read_trajectory

    base, data = task_settings(task, tmp)
    fps = m.forwards_per_step
    steps = args.budget // fps
    every = max(1, round(args.eval_every_forwards / fps))
    out = tmp / f"{task}-{m.name}-{seed}.zst"
    t0 = time.perf_counter()
    r = train(
        **base,
        **m.settings,
        seed=seed,
        steps=steps,
        batch_size=args.batch_size,
        eval_every=every,
        eval_test=False,
        fsync=False,
        output=str(out),
        overwrite=True,
        progress=False,
        log=lambda s: None,
        data=data,
    )
    curve = Curve(m.name, seed, seconds=time.perf_counter() - t0)
    for e in r.evaluations:
        if e.split == "dev":
            curve.points.append((e.step * fps, e.metrics["accuracy"]))
    traj = read_trajectory(out)
    curve.bytes_per_step = out.stat().st_size / max(1, traj.num_steps)
    curve.record_bytes = traj.record_size
    return curve


def run_backprop(seed: int, task: str, args, tmp: Path) -> Curve:
    """AdamW on the same batches (batch_indices of the trainer), full fine-tuning."""
    import torch

    from mezo_ckpt.models.base import load_base
    from mezo_ckpt.trainer import TrainConfig
    from mezo_ckpt.trainer.inputs import batch_indices, build_task, load_splits, load_tokenizer
    from mezo_ckpt.trainer.objectives import Objective
    from mezo_ckpt.trainer.perturb import Perturber
    from mezo_ckpt.trainer.tasks import cross_entropy, score_candidates

    base, data = task_settings(task, tmp)
    cfg = TrainConfig(**base, task="custom" if data else "sentiment")
    splits = load_splits(cfg, data)
    loaded = load_base(cfg.model, progress=False)
    model = loaded.model
    tokenizer = load_tokenizer(loaded.folder, cfg.model)
    ptask = build_task(cfg)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=args.backprop_lr)
    names = sorted(n for n, _ in model.named_parameters())
    pert = Perturber(model, names, 0, "normal16", 1e-3)
    obj = Objective(ptask, "ce", model, tokenizer, pert, None, None)
    dev = splits["dev"]  # load_splits already took the fixed eval subset
    train_rows = splits["train"].examples
    curve = Curve("backprop", seed)
    t0 = time.perf_counter()
    steps = args.backprop_steps
    every = max(1, round(args.eval_every_forwards / 2))
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            model.eval()
            metrics, _ = obj.evaluate(dev, 32)
            curve.points.append((step, metrics["accuracy"]))
        if step == steps:
            break
        idx = batch_indices(seed, step, len(train_rows), args.batch_size)
        enc = ptask.encode(tokenizer, [train_rows[i] for i in idx])
        model.requires_grad_(True)
        loss = cross_entropy(score_candidates(model, enc), enc)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.requires_grad_(False)
    curve.seconds = time.perf_counter() - t0
    return curve


def summarize(curves: list[Curve], names: list[str], labels: dict[str, str], budget: int):
    third = budget // 3
    by = {n: [c for c in curves if c.method == n] for n in names}
    mezo_end = [c.at(budget) for c in by.get("mezo", [])]
    target = statistics.mean(mezo_end) if mezo_end else None
    print()
    print(
        f"| method | dev acc @ 0 | @ {third} fwd (1/3) | @ {budget} fwd | forwards to reach "
        "MeZO's final (mean of seeds) | record bytes | file bytes/step | s/run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        cs = by[n]
        if not cs:
            continue

        def stat(f, cs=cs):
            vals = [c.at(f) for c in cs]
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

        reach = "-"
        if target is not None:
            fwds = sorted({f for c in cs for f, _ in c.points})
            hit = [
                f for f in fwds if statistics.mean([c.at(f) or 0.0 for c in cs]) >= target - 1e-12
            ]
            reach = f"{hit[0]} ({hit[0] / budget:.2f} of budget)" if hit else "not reached"
        bps = statistics.mean(c.bytes_per_step for c in cs)
        secs = statistics.mean(c.seconds for c in cs)
        print(
            f"| {labels[n]} | {stat(0)} | {stat(third)} | {stat(budget)} | {reach} | "
            f"{cs[0].record_bytes} | {bps:.1f} | {secs:.0f} |"
        )
    if target is not None:
        print(f"\nMeZO's dev accuracy at {budget} forwards (the target): {target:.3f}")


def plot(curves: list[Curve], labels: dict[str, str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for n in dict.fromkeys(c.method for c in curves):
        cs = [c for c in curves if c.method == n]
        xs = sorted({f for c in cs for f, _ in c.points})
        ys = [statistics.mean([c.at(f) or 0.0 for c in cs]) for f in xs]
        if n == "backprop":
            xs = [3 * x for x in xs]  # forward + backward ~ 3 forwards
        ax.plot(xs, ys, marker="o", ms=3, label=labels[n])
    ax.set_xlabel("forward passes (backprop: steps x 3)")
    ax.set_ylabel("dev accuracy (mean of seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=("sentiment", "toy"), default="toy")
    ap.add_argument("--methods", default="mezo,mezo-momentum,one-sided,fzoo,fzoo-momentum")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=200, help="forward passes per run")
    ap.add_argument("--eval-every-forwards", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backprop", action="store_true", help="add backprop + AdamW")
    ap.add_argument("--backprop-steps", type=int, default=100)
    ap.add_argument("--backprop-lr", type=float, default=1e-5)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--json", type=Path, help="write every curve here")
    args = ap.parse_args()

    import torch

    seeds = [int(s) for s in args.seeds.split(",")]
    table = methods(args.task)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {', '.join(table)}")
    labels = {n: table[n].label for n in names}
    print(
        f"# convergence, task {args.task}, budget {args.budget} forwards of batch "
        f"{args.batch_size}, seeds {seeds}"
    )
    print(
        f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    curves: list[Curve] = []
    with TemporaryDirectory() as tmp:
        for n in names:
            m = table[n]
            for seed in seeds:
                c = run_method(m, seed, args.task, args, Path(tmp))
                curves.append(c)
                pts = " ".join(f"{f}:{a:.3f}" for f, a in c.points)
                print(f"{n:14s} seed {seed}  {pts}  ({c.seconds:.0f} s)", flush=True)
        if args.backprop:
            labels["backprop"] = f"backprop + AdamW (lr {args.backprop_lr:g}; by steps)"
            names.append("backprop")
            for seed in seeds:
                c = run_backprop(seed, args.task, args, Path(tmp))
                curves.append(c)
                pts = " ".join(f"step {s}:{a:.3f}" for s, a in c.points)
                print(f"backprop       seed {seed}  {pts}  ({c.seconds:.0f} s)", flush=True)
    summarize([c for c in curves if c.method != "backprop"], names[:], labels, args.budget)
    if args.backprop:
        bp = [c for c in curves if c.method == "backprop"]
        end = [c.points[-1][1] for c in bp]
        sd = statistics.stdev(end) if len(end) > 1 else 0.0
        print(
            f"backprop + AdamW, {args.backprop_steps} steps: dev acc "
            f"{statistics.mean(end):.3f} ± {sd:.3f} "
            f"({statistics.mean(c.seconds for c in bp):.0f} s/run incl. evaluation)"
        )
    if args.json:
        args.json.write_text(json.dumps([c.__dict__ for c in curves], indent=1))
    if args.plot:
        plot(curves, labels, args.plot, f"{args.task}: dev accuracy vs forward passes")


if __name__ == "__main__":
    main()
