"""The model graph: `features` edges, topological order, downstream sets, root input fields, versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from modelstream.errors import ConfigError, ConfigErrors
from modelstream.registry.spec import BASE_KEY, ModelSpec


def upstream_of(model: ModelSpec) -> list[str]:
    return sorted(set(model.features.values()))


def topological_order(models: dict[str, ModelSpec], file: str) -> list[str]:
    """Models in an order where every model comes after the models it reads; cycles are errors."""
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ConfigErrors([ConfigError(
                f"models form a cycle through `features`: {' -> '.join(cycle)}",
                file=file, line=models[name].line, hint="a model cannot depend on its own output")])
        state[name] = "visiting"
        for upstream in upstream_of(models[name]):
            if upstream in models:
                visit(upstream, path + [name])
        state[name] = "done"
        order.append(name)

    for name in sorted(models):
        visit(name, [])
    return order


def downstream_of(models: dict[str, ModelSpec], names: Iterable[str]) -> set[str]:
    """The given models and every model that reads them, directly or not."""
    result = set(names)
    changed = True
    while changed:
        changed = False
        for model in models.values():
            if model.name not in result and result.intersection(model.features.values()):
                result.add(model.name)
                changed = True
    return result


def root_fields(models: dict[str, ModelSpec], name: str) -> tuple[str, ...]:
    """The user fields a model's output ultimately depends on (`_base`: the whole document)."""
    model = models[name]
    fields: set[str] = set()
    if model.key == BASE_KEY:
        fields.add(BASE_KEY)
    elif model.key not in model.features:
        fields.add(model.key)
    for upstream in model.features.values():
        fields.update(root_fields(models, upstream))
    if BASE_KEY in fields:
        return (BASE_KEY,)
    return tuple(sorted(fields))


def versions(models: dict[str, ModelSpec], order: list[str]) -> dict[str, str]:
    """A digest of each model's spec and of its upstream versions: change one, and downstream changes too."""
    result: dict[str, str] = {}
    for name in order:
        model = models[name]
        spec = {
            "object": model.object,
            "args": model.args,
            "key": model.key,
            "features": model.features,
            "filter": model.filter,
            "vector": model.vector,
            "upstream": {u: result[u] for u in upstream_of(model)},
        }
        if model.weights_sha256:  # only when set: adding the key never changes an existing version
            spec["weights"] = model.weights_sha256
        text = json.dumps(spec, sort_keys=True, default=str)
        result[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return result
