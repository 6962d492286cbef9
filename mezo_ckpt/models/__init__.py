"""Base models: loading (folder, Hub, embedded default), whole-base identity and its check,
adapters (LoRA, prefix), accelerate offload, and the output formats of rebuilt weights."""
