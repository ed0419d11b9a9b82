"""The registry: YAML -> validated specs -> model graph -> loaded models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelstream.registry import graph, source
from modelstream.registry.models import Model, load_models
from modelstream.registry.spec import BASE_KEY, IndexSpec, ModelSpec, Registry, parse


@dataclass(frozen=True)
class Plan:
    """What the daemon needs from a registry: the specs plus the graph facts derived from them."""

    registry: Registry
    order: list[str]  # topological
    versions: dict[str, str]
    roots: dict[str, tuple[str, ...]]

    def models_of(self, collection: str) -> list[ModelSpec]:
        """Active models of a collection, upstream first."""
        return [m for m in self.models_of_all() if m.collection == collection]

    def models_of_all(self) -> list[ModelSpec]:
        """Every active model, upstream first."""
        return [self.registry.models[n] for n in self.order if self.registry.models[n].active]


def load(path: str | Path) -> Plan:
    """Read and validate a registry; raises ConfigErrors (file:line) before anything runs."""
    path = Path(path).resolve()
    registry = parse(source.read(path), path)
    order = graph.topological_order(registry.models, str(path))
    return Plan(
        registry=registry,
        order=order,
        versions=graph.versions(registry.models, order),
        roots={name: graph.root_fields(registry.models, name) for name in order},
    )


__all__ = ["BASE_KEY", "IndexSpec", "Model", "ModelSpec", "Plan", "Registry", "load", "load_models"]
