"""`mezo-ckpt push` / `mezo-ckpt pull`: share fine-tunes on the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mezo_ckpt.cli.common import STEP_HELP, parse_step
from mezo_ckpt.util.text import clean


@click.command(
    epilog="""\b
Examples:
  mezo-ckpt push trajectory.zst me/smollm2-sentiment-mezo
  mezo-ckpt push run.zst me/tuned --private --commit-message "200 steps, lr 1e-5"
  mezo-ckpt push run.zst me/tuned --create-pr
  mezo-ckpt push run.zst me/tuned --base-repo me/my-base --base-revision main  # pins its commit
  mezo-ckpt push run.zst me/tuned --dry-run preview/   # inspect, upload nothing
  mezo-ckpt push lora.zst me/tuned-lora --with-adapter  # also a PEFT adapter repo
"""
)
@click.argument("trajectory", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("repo_id", metavar="USER/REPO")
@click.option(
    "--private",
    is_flag=True,
    help="Create the repo private (an existing repo keeps its visibility).",
)
@click.option(
    "--revision",
    metavar="BRANCH",
    default=None,
    help="Commit to this branch (created from main if missing). Default: main.",
)
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("--commit-message", metavar="TEXT", default=None, help="Commit title.")
@click.option(
    "--token",
    metavar="TOKEN",
    default=None,
    help="Hub token with write access. Default: HF_TOKEN or `hf auth login`.",
)
@click.option(
    "--base-repo",
    metavar="REPO",
    default=None,
    help="For a trajectory trained from a local folder: the Hub repo holding the same "
    "base weights (downloaded and checked against the trajectory's fingerprints).",
)
@click.option(
    "--base-revision",
    metavar="SHA",
    default=None,
    help="Commit of --base-repo (a branch is resolved to its commit and pinned).",
)
@click.option(
    "--license",
    "license_",
    metavar="ID",
    default=None,
    help="Card license. Default: the base's where known (apache-2.0 for the embedded "
    "default base).",
)
@click.option(
    "--dataset",
    "datasets",
    metavar="ID",
    multiple=True,
    help="Hub dataset id the model was trained on, for the card metadata (repeatable).",
)
@click.option(
    "--dry-run",
    "dry_run",
    metavar="DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the folder that would be uploaded to DIR; upload nothing.",
)
@click.option(
    "--with-adapter",
    is_flag=True,
    help="For a LoRA/prefix run: also upload the replayed PEFT adapter (a few MB), so the "
    "repo is a PEFT repo that AutoPeftModelForCausalLM loads directly.",
)
@click.option(
    "--base",
    "base_spec",
    metavar="PATH|REPO",
    default=None,
    help="Base to replay the adapter on (--with-adapter), for a local-folder base.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def push(
    trajectory: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    commit_message: str | None,
    token: str | None,
    base_repo: str | None,
    base_revision: str | None,
    license_: str | None,
    datasets: tuple[str, ...],
    dry_run: Path | None,
    with_adapter: bool,
    base_spec: str | None,
    as_json: bool,
) -> None:
    """Publish TRAJECTORY to the Hub repo USER/REPO, with a model card.

    One commit uploads the trajectory (its name kept, a few KB), mezo_ckpt.json (the base
    repo pinned to a commit, per-file sha256, fingerprints, trajectory sha256) and a
    README.md model card (base_model, eval results, how to rebuild the model and run the
    trained task). The repo is created if needed. A trajectory trained from a local base
    folder is refused unless --base-repo/--base-revision name a Hub copy that matches it.
    """
    from mezo_ckpt.hub import push as do_push

    r = do_push(
        trajectory,
        repo_id,
        private=private,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
        token=token,
        base_repo=base_repo,
        base_revision=base_revision,
        license=license_,
        datasets=list(datasets) or None,
        dry_run=dry_run,
        with_adapter=with_adapter,
        base=base_spec,
    )
    if as_json:
        click.echo(json.dumps(r.info(), indent=2))
        return
    for note in r.notes:
        click.echo(f"Note: {clean(note)}", err=True)
    tb, wt = r.meta["trajectory"], r.meta["weights"]
    sizes = f"trajectory {tb['bytes']:,} bytes for {wt['bytes']:,} bytes of {wt['dtype']} weights"
    if r.folder is not None:
        click.echo(
            f"Dry run: wrote {', '.join(sorted(r.files))} to {r.folder} ({sizes}); "
            "nothing was uploaded."
        )
        return
    click.echo(f"Pushed {', '.join(sorted(r.files))} to {r.repo_id} ({sizes}).")
    click.echo(f"Commit {r.commit}: {r.commit_url}")
    if r.pr_url:
        click.echo(f"Opened pull request: {r.pr_url}")
    click.echo(f"Load it with: mezo-ckpt pull {r.repo_id} -o {r.repo_id.split('/')[-1]}")


@click.command(
    epilog="""\b
Examples:
  mezo-ckpt pull me/smollm2-sentiment-mezo -o tuned/
  mezo-ckpt pull me/smollm2-sentiment-mezo --step best -o best/
  mezo-ckpt pull me/tuned --revision refs/pr/1 --step 50
  HF_HUB_OFFLINE=1 mezo-ckpt pull me/tuned -o tuned-again/
  mezo-ckpt pull ./run.zst --base ./my-local-base/ -o tuned/
\b
Python:
  model, tok = mezo_ckpt.load("me/smollm2-sentiment-mezo", step="best")
"""
)
@click.argument("source", metavar="USER/REPO|PATH")
@click.option(
    "--revision",
    metavar="REV",
    default=None,
    help="Branch, tag or commit of the published repo. Default: main.",
)
@click.option("--step", "step", metavar="N|best|last", default=None, help=STEP_HELP)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Copy the from_pretrained-ready folder here (new or empty). "
    "Default: only the cache, whose path is printed.",
)
@click.option(
    "--token",
    metavar="TOKEN",
    default=None,
    help="Hub token for private repos. Default: HF_TOKEN or `hf auth login`.",
)
@click.option(
    "--base",
    "base_spec",
    metavar="PATH|REPO",
    default=None,
    help="Base model folder or repo, for trajectories trained from an unpublished local "
    "folder (its identity is still checked).",
)
@click.option(
    "--ignore-base-mismatch",
    is_flag=True,
    help="Replay even onto a base whose identity differs (loud; recorded in the output's "
    "provenance; never cached). Needs -o.",
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Allow a step after the file's last checkpoint (a cut or unsealed file).",
)
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Replay the base shard by shard into the cache (peak memory: one safetensors "
    "shard). Default: stream when the base would not fit in half the free memory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; only the result lines.")
def pull(
    source: str,
    revision: str | None,
    step: str | None,
    output: Path | None,
    token: str | None,
    base_spec: str | None,
    ignore_base_mismatch: bool,
    allow_unverified: bool,
    stream: bool | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Rebuild a published fine-tune from USER/REPO (or a local trajectory / folder).

    Downloads the trajectory and mezo_ckpt.json at one commit and checks the trajectory's
    sha256; downloads the base at its pinned commit and checks every file's sha256 and the
    base's fingerprints (every tensor, config, tokenizer); replays bit for bit; caches the
    result under <cache>/replayed/<trajectory sha256>/step-<N>/ ($MEZO_CKPT_CACHE, default
    ~/.cache/mezo-ckpt), so the next pull or mezo_ckpt.load() is instant and works offline
    (HF_HUB_OFFLINE=1). A cached entry is checked against the hashes recorded when it was
    built, and rebuilt if anything changed.
    """
    from mezo_ckpt.errors import OutputError
    from mezo_ckpt.hub import pull as do_pull

    if ignore_base_mismatch and output is None:
        raise OutputError("--ignore-base-mismatch needs -o DIR (such weights are never cached)")
    r = do_pull(
        source,
        output,
        step=parse_step(step),
        revision=revision,
        token=token,
        base=base_spec,
        progress=not (as_json or quiet),
        allow_unverified=allow_unverified,
        ignore_base_mismatch=ignore_base_mismatch,
        stream=stream,
    )
    if as_json:
        click.echo(json.dumps(r.info(), indent=2))
        return
    for note in r.notes:
        click.echo(f"Note: {clean(note)}", err=True)
    how = "from the cache" if r.cache_hit else "replayed"
    what = {
        "fingerprint": "verified against the trainer's fingerprint",
        "records": "records verified by a later checkpoint",
    }.get(str(r.verified), "NOT verified")
    at = f"@{r.commit[:12]}" if r.commit else ""
    click.echo(f"Rebuilt {clean(r.source)}{at} at step {r.step}/{r.num_steps} ({how}; {what}).")
    click.echo(f"Checked: {clean('; '.join(r.checked))}.")
    click.echo(f"Weights: {r.folder}")
