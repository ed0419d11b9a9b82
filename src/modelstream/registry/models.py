"""Turn model specs into callable models: import, instantiate once per shared object, batch-predict.

An object may be a plain callable (one value -> one output), or offer the tutorial's
preprocess (one value -> one item) / forward (a batch of items -> a batch of outputs) /
postprocess (one output -> one stored value). A torch.nn.Module's forward gets a stacked tensor.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelstream.errors import ConfigError, ConfigErrors
from modelstream.registry.spec import ModelSpec, Registry


@dataclass
class Model:
    spec: ModelSpec
    obj: Any
    version: str
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.spec.name

    def predict(self, values: list[Any]) -> list[Any]:
        """One output per value; raises whatever the model raises (the caller isolates failures)."""
        preprocess = getattr(self.obj, "preprocess", None)
        postprocess = getattr(self.obj, "postprocess", None)
        forward = getattr(self.obj, "forward", None)
        if forward is None:
            outputs = [self.obj(value) for value in values]
        else:
            items = [preprocess(v) for v in values] if preprocess else list(values)
            outputs = self._torch_forward(items) if _is_torch_module(self.obj) else list(forward(items))
        if len(outputs) != len(values):
            raise ValueError(f"model {self.name} returned {len(outputs)} outputs for {len(values)} inputs")
        return [postprocess(o) for o in outputs] if postprocess else outputs

    def _torch_forward(self, items: list[Any]) -> list[Any]:
        import torch

        batch = torch.stack([torch.as_tensor(item) for item in items]).to(self.device)
        with torch.no_grad():
            out = self.obj(batch)
        return list(out.detach().cpu())


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def import_path(path: str, search: list[Path]) -> Any:
    """Import `module:attr` (attr may be dotted), looking in `search` folders first."""
    module_name, _, attr = path.partition(":")
    for folder in reversed(search):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _instantiate(target: Any, args: Any) -> Any:
    if isinstance(target, type):
        if args is None:
            return target()
        return target(**args) if isinstance(args, dict) else target(*args)
    if args is not None:
        raise TypeError(f"`args` given, but {target!r} is not a class to instantiate")
    return target


def _pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def load_weights(obj: Any, path: str) -> None:
    """A model's `weights:` (a state_dict, as `modelstream train` saves it), loaded after instantiation."""
    import torch

    if not hasattr(obj, "load_state_dict"):
        raise TypeError(f"`weights` given, but {type(obj).__name__} has no load_state_dict")
    obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_models(registry: Registry, versions: dict[str, str], names: list[str] | None = None) -> dict[str, Model]:
    """Load every model (or `names`), sharing one object per owner; import failures name file:line."""
    search = [registry.folder.resolve(), Path.cwd()]
    objects: dict[str, tuple[Any, str]] = {}
    models: dict[str, Model] = {}
    errors: list[ConfigError] = []
    wanted = names if names is not None else list(registry.models)
    for name in wanted:
        spec = registry.models[name]
        owner = spec.shares or name
        if owner not in objects:
            owner_spec = registry.models[owner]
            try:
                obj = _instantiate(import_path(owner_spec.object, search), owner_spec.args)
                if owner_spec.weights:
                    load_weights(obj, owner_spec.weights)
                device = _pick_device(owner_spec.device)
                if _is_torch_module(obj):
                    obj = obj.to(device).eval()
                elif hasattr(obj, "to_device"):
                    obj.to_device(device)
                objects[owner] = (obj, device)
            except Exception as exc:  # noqa: BLE001 - any import/constructor failure is a config error
                errors.append(ConfigError(
                    f"models.{owner}: cannot load {owner_spec.object!r}: {type(exc).__name__}: {exc}",
                    file=str(registry.path), line=owner_spec.line,
                    hint="the module must be importable from the working directory or the registry's folder",
                ))
                continue
        obj, device = objects[owner]
        models[name] = Model(spec=spec, obj=obj, version=versions[name], device=device)
    if errors:
        raise ConfigErrors(errors)
    return models
