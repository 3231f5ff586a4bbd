"""Profiles: `configs/<name>.yaml` states only what differs from `params.yaml`.

A profile runs as a DVC experiment: `dvc exp run --temp -n <name> -S key=value ...` with one
override per value the profile sets (`set_param_args`), so the workspace and every tracked file
stay as they are, and `dvc exp show` lists the profile's values beside the default's.
`compose` gives the same params as one mapping (tests, benchmarks, `sdlab profile --show`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from sdlab.config import ConfigError, Params, parse_params, read_yaml

PROFILES_DIR = "configs"


def profile_path(name: str, root: str | Path = ".") -> Path:
    """`configs/<name>.yaml` (or `name` itself when it is a path to a file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(root) / PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(root) / PROFILES_DIR).glob("*.yaml"))
        raise ConfigError(f"profile {name}: {path} not found (profiles: {', '.join(known) or 'none'})")
    return path


def read_mapping(path: Path) -> dict:
    raw = read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return raw


def compose(base: dict, delta: dict) -> dict:
    """`base` with `delta` laid over it: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = compose(base[key], value)
        else:
            out[key] = value
    return out


def leaves(delta: dict, base: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every value the delta sets: walked into mappings that `base` has
    as mappings, whole elsewhere (a section that is null in `base`). ConfigError for a key `base`
    lacks: DVC's overrides, like the schema, take no new keys."""
    found = []
    for key, value in delta.items():
        dotted = f"{prefix}{key}"
        if not isinstance(base, dict) or key not in base:
            raise ConfigError(f"{dotted}: params.yaml has no such key (a typo, or a key to add to params.yaml)")
        if isinstance(value, dict) and isinstance(base[key], dict):
            found += leaves(value, base[key], dotted + ".")
        else:
            found.append((dotted, value))
    return found


def _override_value(value: Any) -> str:
    """A value in Hydra's override grammar (what `dvc exp run -S` parses): strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        # backslashes are literal except in runs before a quote, which are doubled (Hydra's rule)
        quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted) + "'"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot pass {value!r} ({type(value).__name__}) to dvc exp run -S")


def set_param_args(delta: dict, base: dict) -> list[str]:
    """`-S key=value` arguments of `dvc exp run` that turn `base` (params.yaml) into the profile."""
    args = []
    for key, value in leaves(delta, base):
        args += ["-S", f"{key}={_override_value(value)}"]
    return args


class Profile(NamedTuple):
    delta: dict  # what configs/<name>.yaml sets
    composed: dict  # params.yaml with it applied
    params: Params  # the same, validated
    overrides: list[str]  # `-S key=value` arguments of `dvc exp run` (against params.yaml, not `composed`)


def load_profile(name: str, root: str | Path = ".") -> Profile:
    """A profile read, checked against params.yaml and composed with it."""
    root = Path(root)
    path = profile_path(name, root)
    delta, base = read_mapping(path), read_mapping(root / "params.yaml")
    try:
        overrides = set_param_args(delta, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    composed = compose(base, delta)
    return Profile(delta, composed, parse_params(composed), overrides)
