"""``python -m mezo_ckpt ...`` runs the command line (``torchrun -m mezo_ckpt train ...``)."""

from mezo_ckpt.cli import main

if __name__ == "__main__":
    main()
