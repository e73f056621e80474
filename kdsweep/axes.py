"""The `sweep:` section: any config key as a grid axis, checked value by value, expanded into per-combination configs.

A sweep maps dotted config keys to lists of values. Keys that already are grid axes (`seeds`, `kd.temperature`,
`kd.alpha`, `prune.amount`, `prune.method`, `quantize.method`) simply take the swept list; every other key multiplies
the grid: each combination of their values is a full config, planned as today, and the plans are merged by content
hash (plan.make_plan), so work that a combination does not change (one teacher for many student archs) is done once.
"""
from __future__ import annotations

import difflib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

# keys that are one setting per sweep, not per variant: what runs where, how it is timed, what it is called
_PER_SWEEP = {"name": "the experiment's name", "sweep": "the sweep itself", "max_variants": "the plan limit",
              "measure": "latency is one interleaved session per sweep", "resources": "one trial size per sweep",
              "tracking": "one tracking destination per sweep"}
# data keys that change the arrays loaded (one dataset per sweep for now)
_DATASET_KEYS = {"dataset", "root", "download", "verify", "train_limit", "test_limit", "split_seed", "stored_size"}
# keys that are grid axes of the plan already: a swept list replaces their value instead of multiplying configs
LIST_AXES = ("seeds", "kd.temperature", "kd.alpha", "prune.amount", "prune.method", "quantize.method")
# how many combinations are expanded at most before counting variants (each gives at least one distinct variant in
# any useful sweep; this only guards against building millions of configs to find that out)
_EXPAND_FACTOR = 20


@dataclass(frozen=True)
class Combo:
    """One combination of the multiplying axes: dotted key -> value, in the sweep's key order."""

    values: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def _problem_key(key: str) -> str | None:
    """Why a dotted key cannot be swept, or None."""
    parts = key.split(".")
    if parts[0] in _PER_SWEEP:
        return f"not an axis: {parts[0]} is one setting per sweep ({_PER_SWEEP[parts[0]]})"
    if parts[0] == "data" and len(parts) > 1 and parts[1] in _DATASET_KEYS:
        return (f"not an axis: data.{parts[1]} changes the dataset, and a sweep trains on one dataset; run one "
                f"experiment per dataset")
    return None


def set_key(raw: dict, key: str, value: Any) -> dict:
    """A deep copy of `raw` with the dotted `key` set to `value` (sections created as needed)."""
    out = json.loads(json.dumps(raw))
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value
    return out


def validate(raw: dict, sweep: Any, leaf_keys: frozenset[str], build: Callable[[dict], Any]) -> dict[str, list]:
    """Check every swept key and value as the scalar key would be checked; return the sweep as {key: values}.

    `raw` is the config without its sweep section, `leaf_keys` the dotted keys that exist, `build(raw)` validates a
    config (raising ConfigError whose message starts `config key '<key>': ...`).
    """
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"config key 'sweep': expected a mapping of dotted keys to lists of values, got "
                          f"{type(sweep).__name__}")
    out: dict[str, list] = {}
    for key, values in sweep.items():
        where = f"config key 'sweep.{key}'"
        if not isinstance(key, str) or key not in leaf_keys:
            close = difflib.get_close_matches(str(key), sorted(leaf_keys), n=1)
            hint = f" (did you mean 'sweep.{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key{hint}")
        why = _problem_key(key)
        if why:
            raise ConfigError(f"{where}: {why}")
        if not isinstance(values, list):
            raise ConfigError(f"{where}: expected a list of values, e.g. [a, b], got {values!r}")
        if not values:
            raise ConfigError(f"{where}: an empty list; give at least one value")
        canon = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(canon)) != len(canon):
            raise ConfigError(f"{where}: duplicate values in {values!r}")
        for v in values:
            try:
                build(set_key(raw, key, v))
            except ConfigError as exc:
                msg = str(exc)
                # "config key 'student.arch': unknown arch ..." -> the swept key and value, one line
                detail = msg.split(": ", 1)[1] if msg.startswith("config key ") and ": " in msg else msg
                raise ConfigError(f"{where}: value {v!r}: {detail}") from None
        out[key] = values
    return out


def split(sweep: dict[str, list]) -> tuple[dict[str, list], dict[str, list]]:
    """(list-axis keys, multiplying keys) of a validated sweep (config.build_config sets one-value keys as plain
    settings)."""
    lists = {k: v for k, v in sweep.items() if k in LIST_AXES}
    multi = {k: v for k, v in sweep.items() if k not in LIST_AXES}
    return lists, multi


def combos(multi: dict[str, list], limit: int) -> list[Combo]:
    """Every combination of the multiplying keys (one empty combo when there are none)."""
    n = 1
    for values in multi.values():
        n *= len(values)
    if n > limit * _EXPAND_FACTOR:
        raise ConfigError(f"config key 'max_variants': the sweep has {n:,} combinations, far beyond max_variants "
                          f"{limit:,}; raise max_variants (--set max_variants=N) if you mean it")
    keys = list(multi)
    return [Combo(tuple(zip(keys, vals))) for vals in itertools.product(*(multi[k] for k in keys))]


def render(value: Any) -> str:
    """A swept value as a short readable string: lists joined by '+', an empty list as 'none'."""
    if isinstance(value, list):
        return "+".join(render(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def key_part(key: str, value: Any) -> str:
    """`key=value` made safe for file names and Tune trial names (variant keys name files)."""
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"{key}={render(value)}")


def canonical(values: dict[str, Any]) -> str:
    """A variant's swept values as canonical JSON (the `axes` result column); '' for none."""
    return json.dumps(values, sort_keys=True, separators=(",", ":")) if values else ""
