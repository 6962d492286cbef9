"""The core: the constants of the spec, the Philox perturbation stream, the update rule,
the compiled kernels behind them, and fingerprints. It never imports click, the trainer,
the hub or the CLI; training, replay and every kernel's tests import it."""
