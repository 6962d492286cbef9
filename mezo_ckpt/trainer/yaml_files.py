"""YAML recipes as files: which file a name means (a packaged recipe, or a path), and a
strict reader (safe types, no duplicate keys, bounded size and nesting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mezo_ckpt.errors import ConfigError


def _packaged_recipe(name: str):
    """``sst2`` or ``sst2.yaml`` (no folder part) names a recipe shipped in mezo_ckpt.recipes."""
    from mezo_ckpt import recipes

    if "/" in name or "\\" in name:
        return None
    return recipes.path(name[:-5] if name.endswith(".yaml") else name)


#: Largest YAML recipe read (a real one is a few hundred bytes).
MAX_YAML_BYTES = 1 << 20


def strict_yaml(text: str, where: str, what: str = "not valid YAML") -> tuple[Any, Any]:
    """(data, node) of YAML text: safe types only, a duplicate key is an error (YAML
    leaves it undefined; PyYAML keeps the last one silently), bounded nesting."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's API
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                except TypeError:  # a list or mapping as a key ("? [1, 2]")
                    raise ConfigError(
                        f"{where}:{key_node.start_mark.line + 1}: a key must be a name, not "
                        f"a {type(key).__name__}"
                    ) from None
                if dup:
                    raise ConfigError(
                        f"{where}:{key_node.start_mark.line + 1}: the key {str(key)[:80]!r} "
                        "appears twice (which one counts would be a guess)"
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        node = yaml.compose(text, Loader=Strict)
        data = yaml.load(text, Loader=Strict)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {what}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a recipe") from None
    return data, node


#: The recipe key `mezo-ckpt sweep` reads (a grid and seeds); `train` leaves it alone.
SWEEP_KEY = "sweep"


def load_sweep(path: str | Path) -> dict[str, Any]:
    """A recipe's ``sweep:`` section (``grid``: setting -> values, ``seeds``), or {}.

    Raises:
        ConfigError: the section is not a mapping of grid and seeds.
    """
    section = _load(path)[2]
    if section is None:
        return {}
    if not isinstance(section, dict) or set(section) - {"grid", "seeds"}:
        raise ConfigError(f"{path}: sweep: must be a mapping with grid: and seeds:")
    if not isinstance(section.get("grid", {}), dict):
        raise ConfigError(f"{path}: sweep: grid: must map settings to lists of values")
    return section


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML recipe: (settings, line of each key). Keys may use dashes or underscores;
    the ``sweep:`` section is `mezo-ckpt sweep`'s (:func:`load_sweep`), not a setting."""
    settings, lines, _ = _load(path)
    return settings, lines


def _load(path: str | Path) -> tuple[dict[str, Any], dict[str, int], Any]:
    """(settings, line of each key, the sweep section or None).

    A bare packaged recipe name (``sst2``) always means the packaged recipe, whatever the
    current folder holds; a file is named as a path (``./sst2.yaml``). ``sst2.yaml`` that
    is both a packaged name and a file here is refused as ambiguous.
    """
    import yaml

    p = Path(path)
    packaged = _packaged_recipe(str(path))
    if packaged is not None and (str(path) == p.stem or not p.is_file()):
        p = packaged
    elif packaged is not None:
        raise ConfigError(
            f"-c {path} names both the packaged recipe and a file in this folder: use "
            f"-c {p.stem} for the recipe or -c ./{path} for the file"
        )
    elif not p.is_file():
        from mezo_ckpt.recipes import NAMES

        raise ConfigError(f"config file not found: {p} (packaged recipes: {', '.join(NAMES)})")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: {len(raw):,} bytes is not a recipe (at most {MAX_YAML_BYTES:,})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e})") from None
    data, node = strict_yaml(text, str(p))
    if data is None:
        return {}, {}, None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{p}: the top level must be a mapping of setting: value")
    lines = {
        str(k.value).replace("-", "_"): k.start_mark.line + 1
        for k, _ in node.value
        if isinstance(k, yaml.ScalarNode)
    }
    settings = {str(k).replace("-", "_"): v for k, v in data.items()}
    return settings, lines, settings.pop(SWEEP_KEY, None)
