"""Models bigger than one device: layers offloaded to disk (accelerate), trained in place."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers_train import write_jsonl
from tinymodels import save_tiny, toy_sentiment

from mezo_ckpt.cli import main
from mezo_ckpt.core.hashing import file_sha256
from mezo_ckpt.trajectory import read_trajectory

pytest.importorskip("accelerate")

MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def args(tmp_path, out, *extra):
    return [
        "train",
        "--model",
        str(tmp_path / "base"),
        "--train-file",
        str(tmp_path / "t.jsonl"),
        "--template",
        "{text} =",
        "--verbalizer",
        "pos= p,neg= n",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "-q",
        "--set",
        "fsync=false",
        "-o",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("trainable", ["*", "model.layers.0.*"])
def test_offloaded_training_equals_in_memory_training(tmp_path, trainable):
    save_tiny(tmp_path / "base", "llama")
    write_jsonl(tmp_path / "t.jsonl", toy_sentiment(48))
    (tmp_path / "map.json").write_text(json.dumps(MAP))
    before = file_sha256(tmp_path / "base" / "model.safetensors")
    cli = CliRunner()
    off = cli.invoke(
        main,
        args(
            tmp_path,
            tmp_path / "off.zst",
            "--trainable",
            trainable,
            "--device-map",
            str(tmp_path / "map.json"),
            "--offload-folder",
            str(tmp_path / "offload"),
        ),
    )
    assert off.exit_code == 0, off.output
    mem = cli.invoke(main, args(tmp_path, tmp_path / "mem.zst", "--trainable", trainable))
    assert mem.exit_code == 0, mem.output
    a, b = read_trajectory(tmp_path / "off.zst"), read_trajectory(tmp_path / "mem.zst")
    assert a.checkpoints == b.checkpoints  # the same weights after every evaluated step
    assert (a.records.coefs == b.records.coefs).all()
    assert a.header.base.tensors_sha256 == b.header.base.tensors_sha256  # frozen ones read
    # the base's own file was never written (trained offloaded weights got writable
    # copies, scratch removed when the run ends)
    assert file_sha256(tmp_path / "base" / "model.safetensors") == before
    assert not list((tmp_path / "offload").rglob("*.bin"))
    # and the file replays, without any offload, to the same verified weights
    r = cli.invoke(
        main,
        [
            "replay",
            str(tmp_path / "off.zst"),
            "--base",
            str(tmp_path / "base"),
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert r.exit_code == 0 and '"verified": "fingerprint"' in r.output


def test_writable_copies_are_scratch(tmp_path):
    """Without --offload-folder the copies go next to the output, and are removed after."""
    save_tiny(tmp_path / "base", "llama")
    write_jsonl(tmp_path / "t.jsonl", toy_sentiment(16))
    (tmp_path / "map.json").write_text(json.dumps(MAP))
    r = CliRunner().invoke(
        main, args(tmp_path, tmp_path / "x.zst", "--device-map", str(tmp_path / "map.json"))
    )
    assert r.exit_code == 0, r.output
    assert read_trajectory(tmp_path / "x.zst").complete
    assert not (tmp_path / "x.zst.offload").exists()
