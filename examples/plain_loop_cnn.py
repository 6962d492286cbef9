"""MeZO as an optimizer in a plain PyTorch loop: a small CNN on a synthetic image set.

The CIFAR-style case: no Hugging Face, no tokenizer, your own model and loop. MeZO needs
only forward passes; the run is recorded in a trajectory of a few kilobytes that rebuilds
the trained weights bit for bit from the initial ones (kept here as a safetensors file).

    python examples/plain_loop_cnn.py                 # about 10 s on a laptop CPU
    python examples/plain_loop_cnn.py --steps 5       # a smoke run (CI)

Then, from a shell: ``mezo-ckpt replay OUT/run.zst --base OUT/init.safetensors
--format safetensors -o trained.safetensors`` rebuilds the same weights.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import mezo_ckpt


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def synthetic_images(n: int, classes: int = 4, seed: int = 0):
    """16x16 RGB images: each class is a fixed pattern, each image that pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, 16, 16, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, classes, (n,), generator=g)
    images = patterns[labels] + 1.5 * torch.randn(n, 3, 16, 16, generator=g)
    return images, labels


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--out", type=Path, default=None, help="folder for run.zst (default: temp)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="mezo-cnn-"))
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = SmallCNN()
    save_file(model.state_dict(), out / "init.safetensors")  # the base replay starts from
    train_x, train_y = synthetic_images(2048, seed=1)
    test_x, test_y = synthetic_images(512, seed=2)
    print(f"test accuracy before: {accuracy(model, test_x, test_y):.3f}")

    with mezo_ckpt.MeZO(model, lr=a.lr, eps=1e-3, output=out / "run.zst", overwrite=True) as opt:
        for step in range(a.steps):
            lo = (step * a.batch_size) % len(train_x)
            x, y = train_x[lo : lo + a.batch_size], train_y[lo : lo + a.batch_size]
            loss = opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y))  # forwards only
            if (step + 1) % 100 == 0 or step + 1 == a.steps:
                acc = accuracy(model, test_x, test_y)
                opt.record_eval({"accuracy": acc, "loss": loss}, split="test")
                print(f"step {step + 1}: loss {loss:.3f}, test accuracy {acc:.3f}")

    size = (out / "run.zst").stat().st_size
    rebuilt = mezo_ckpt.replay(out / "run.zst", out / "init.safetensors")  # a state dict
    trained = model.state_dict()
    same = all(torch.equal(rebuilt[k], trained[k]) for k in trained)
    print(f"trajectory: {out / 'run.zst'} ({size:,} bytes)")
    print(f"replay from init.safetensors matches the trained weights bit for bit: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
