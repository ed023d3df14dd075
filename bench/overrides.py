"""``KEY=VALUE`` overrides of a params mapping for the benches (dotted keys, YAML values), as ``dvc exp run -S``."""

from __future__ import annotations

import yaml


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, _, value = item.partition("=")
        target = data
        *parents, last = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = yaml.safe_load(value)
    return data
