"""`modelstream train NAME`: train the torch.nn.Module parameters of a registry training's models.

    inputs   the models' inputs from the train fold (raw fields, or stored upstream outputs via
             `features`), read once into memory; the validation set's documents never train
    loop     Adam, `batch_size` random rows per iteration, `n_iterations` at most; every
             `validation_interval` iterations the first metric on the validation set decides the best
             weights; `no_improve_then_stop` validations without a better one stop early
    output   the best state_dict of each `use_grads` model at `<data_dir>/weights/<model>-<sha>.pt`;
             the job record (loss and metric curves, weight norms, before/best figures) in
             `_modelstream.trainings`; PNG curves in `<data_dir>/trainings/NAME/`; and the registry
             change that makes the daemon serve the new weights (`weights:` is part of a model's
             version, so the outputs recompute through the usual fingerprints)

semantic_index: models [document side, query side]; loss(document outputs, query outputs), row i of
both from one document; validation: P@k of finding each validation document by its query field.
imputation: model, target; loss(model outputs, target outputs), the target's outputs being its
`preprocess` (a few-hot vector, as the tutorial's FewHot; token ids, as SimpleTokenizer) or its
prediction; a model with `train_forward(inputs, targets)` (teacher forcing, as ConditionalLM) is trained
through it instead of `forward`; validation: metric(model prediction, the target's input), e.g. Jaccard
of predicted and true tags, or of a generated and the true caption's words.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pymongo.database import Database

from modelstream.errors import ConfigError, ConfigErrors, ModelstreamError
from modelstream.registry import Model, Plan, load_models
from modelstream.registry.models import _is_torch_module
from modelstream.registry.spec import TrainingSpec
from modelstream.training import losses, measures, plots
from modelstream.training.inputs import MISSING, Inputs, own_database, train_records
from modelstream.training.validation import (
    METRICS, ValidationSet, load_set, metric_fns, paired_inputs, prediction_scores, validate_pair, vectors,
)

TRAININGS = "_modelstream.trainings"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def training_spec(plan: Plan, name: str) -> TrainingSpec:
    spec = plan.registry.trainings.get(name)
    if spec is None:
        raise ModelstreamError(f"no training {name!r} in {plan.registry.path}",
                               hint=f"known: {', '.join(plan.registry.trainings) or 'none (add a `trainings:` section)'}")
    return spec


class Task:
    """The data of one training, ready for the loop: tensors of the trained models' inputs, fixed outputs."""

    def __init__(self, plan: Plan, spec: TrainingSpec, models: dict[str, Model], vset: ValidationSet,
                 fns: dict[str, Callable]):
        import torch

        self.plan, self.spec, self.models, self.vset, self.fns = plan, spec, models, vset, fns
        self.inputs = Inputs(plan)
        self.sides: list[Model] = [models[n] for n in spec.models]
        self.target = models[spec.target] if spec.target else None
        self.torch = torch
        self.search = [plan.registry.folder.resolve(), Path.cwd()]  # where user losses and measures import from
        self.measure = measures.resolve(spec.measure, self.search)

    def load(self, db: Database) -> int:
        """Read the train fold; returns the number of usable documents."""
        wanted = [m.spec for m in self.sides] + ([self.target.spec] if self.target else [])
        columns: list[list] = [[] for _ in wanted]
        for record in train_records(db, self.plan, self.sides[0].spec.collection, self.vset.ids):
            values = [self.inputs.value(s, record) for s in wanted]
            if any(v is MISSING for v in values):
                continue
            for column, value in zip(columns, values):
                column.append(value)
        n = len(columns[0])
        if n < 2:
            raise ModelstreamError(f"training {self.spec.name!r}: only {n} documents of the train fold have "
                                   f"inputs for {', '.join(s.name for s in wanted)}",
                                   hint="the daemon (or `modelstream backfill`) must have computed the "
                                        "upstream outputs the models read")
        self.data: list[Any] = []
        for model, values in zip(self.sides, columns):
            if self.spec.use_grads.get(model.name):
                self.data.append(_stack(model, values).to(model.device))
            else:
                self.data.append(vectors(model, values).to(self.sides[0].device))
        if self.target is not None:
            self.targets = _target_tensor(self.target, columns[-1]).to(self.sides[0].device)
        return n

    def loss_fn(self) -> Callable:
        pos_weight = self.spec.pos_weight
        if pos_weight == "auto":
            pos_weight = losses.auto_pos_weight(self.targets.cpu()) if self.target is not None else None
        return losses.resolve(self.spec.loss, self.search, pos_weight, self.measure)

    def forward(self, index) -> list:
        outs = []
        for model, data in zip(self.sides, self.data):
            outs.append(model.obj(data[index]) if self.spec.use_grads.get(model.name) else data[index])
        return outs

    def batch_loss(self, loss: Callable, index):
        if self.target is None:
            outs = self.forward(index)
            return loss(outs[0], outs[1])
        targets = self.targets[index]
        model = self.sides[0]
        train_forward = getattr(model.obj, "train_forward", None)
        if train_forward is not None:  # a model whose training pass reads the target (teacher forcing)
            out = train_forward(self.data[0][index], targets)
        else:
            out = self.forward(index)[0]
        pos_weight = getattr(loss, "pos_weight", None)
        if pos_weight is not None and pos_weight.device != out.device:
            loss.pos_weight = pos_weight.to(out.device)
        return loss(out, targets.to(out.dtype) if targets.is_floating_point() else targets)

    def validate(self) -> tuple[dict[str, float], int]:
        trained = [self.models[n].obj for n in self.spec.trained]
        for obj in trained:
            obj.eval()
        try:
            if self.spec.kind == "semantic_index":
                result = validate_pair(self.plan, self.vset, self.sides, self.measure, self.fns)
                return result["metrics"], result["count"]
            (values, truths), _ = paired_inputs([self.sides[0].spec, self.target.spec], self.vset, self.inputs)
            if not values:
                raise ModelstreamError(f"no record of validation set {self.vset.meta['_id']!r} has inputs for "
                                       f"{self.sides[0].name!r} and {self.target.name!r}")
            predictions = []
            for start in range(0, len(values), 256):
                predictions.extend(self.sides[0].predict(values[start:start + 256]))
            return prediction_scores(predictions, truths, self.fns), len(values)
        finally:
            for obj in trained:
                obj.train()


def _stack(model: Model, values: list):
    import torch

    preprocess = getattr(model.obj, "preprocess", None)
    items = [preprocess(v) for v in values] if preprocess else values
    stacked = torch.stack([torch.as_tensor(item) for item in items])
    return stacked.float() if stacked.is_floating_point() else stacked


def _target_tensor(model: Model, values: list):
    """The target's outputs: its preprocess where it has no forward (the tutorial's FewHot), else its prediction."""
    import numpy as np
    import torch

    obj = model.obj
    if hasattr(obj, "preprocess") and not hasattr(obj, "forward"):
        outs = [obj.preprocess(v) for v in values]
    else:
        outs = model.predict(values)
    stacked = torch.stack([torch.as_tensor(np.asarray(o.detach().cpu() if hasattr(o, "detach") else o))
                           for o in outs])
    return stacked if not stacked.is_floating_point() else stacked.float()  # token ids stay integers


def _check_trainable(plan: Plan, spec: TrainingSpec, models: dict[str, Model]) -> None:
    problems = []
    for name in spec.trained:
        if not _is_torch_module(models[name].obj):
            problems.append(ConfigError(
                f"trainings.{spec.name}.use_grads.{name}: {type(models[name].obj).__name__} is not a "
                "torch.nn.Module, so it has no parameters to train", file=str(plan.registry.path), line=spec.line,
                hint="train a torch.nn.Module (e.g. `object: torch.nn:Linear`); set use_grads false for the rest"))
        elif not any(p.requires_grad for p in models[name].obj.parameters()):
            problems.append(ConfigError(f"trainings.{spec.name}: model {name!r} has no trainable parameters",
                                        file=str(plan.registry.path), line=spec.line))
    if problems:
        raise ConfigErrors(problems)


def _weight_summary(models: dict[str, Model], names: tuple[str, ...]) -> dict[str, tuple[float, float, float]]:
    summary = {}
    for name in names:
        for param, tensor in models[name].obj.state_dict().items():
            t = tensor.detach().float()
            key = f"{name}/{param}".replace(".", "/")
            summary[key] = (float(t.norm()), float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0)
    return summary


def train(db: Database, plan: Plan, name: str, progress: bool = True,
          echo: Callable[[str], None] = print) -> dict:
    """Run one training to the end (or early stop); returns the job record (also stored)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    spec = training_spec(plan, name)
    own = own_database(db, plan.registry)
    try:
        vset = load_set(db, plan, spec.validation_set)
    except ModelstreamError as exc:
        raise ConfigError(f"trainings.{name}.validation_set: {exc.message}", file=str(plan.registry.path),
                          line=spec.line, hint=exc.hint) from exc
    names = list(spec.models) + ([spec.target] if spec.target else [])
    stale = vset.stale_models(plan, read_by=names)
    if stale:
        echo(f"note: validation set {spec.validation_set!r} froze outputs of older versions of "
             f"{', '.join(stale)}; recreate it with --replace for exact figures")
    models = load_models(plan.registry, plan.versions, names)
    _check_trainable(plan, spec, models)
    fns = metric_fns(list(spec.metrics), plan)
    torch.manual_seed(spec.seed)
    task = Task(plan, spec, models, vset, fns)
    n_train = task.load(db)
    loss_fn = task.loss_fn()
    params = [p for n in spec.trained for p in models[n].obj.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=spec.lr)
    rng = np.random.default_rng(spec.seed)
    metric_names = list(spec.metrics)

    job: dict[str, Any] = {
        "training": name, "kind": spec.kind, "spec": _spec_doc(spec), "status": "running", "started": _now(),
        "registry": str(plan.registry.path), "versions": {n: plan.versions[n] for n in names},
        "validation_set": spec.validation_set, "train_count": n_train, "metric_names": metric_names,
        "loss": {"iterations": [], "values": []}, "validations": [], "weights": [],
    }
    job_id = own[TRAININGS].insert_one(dict(job)).inserted_id
    weight_log: dict[str, dict[str, list]] = {}

    def validation_point(iteration: int) -> float:
        scores, count = task.validate()
        job["validation_count"] = count
        job["validations"].append({"iteration": iteration, "values": [scores[m] for m in metric_names]})
        for key, (norm, mean, std) in _weight_summary(models, spec.trained).items():
            entry = weight_log.setdefault(key, {"name": key, "norm": [], "mean": [], "std": []})
            entry["norm"].append(norm), entry["mean"].append(mean), entry["std"].append(std)
        return scores[metric_names[0]]

    for obj in (models[n].obj for n in spec.trained):
        obj.train()
    best_score = validation_point(0)
    job["before"] = {"iteration": 0, "values": job["validations"][0]["values"]}
    best = {"iteration": 0, "values": job["before"]["values"]}
    best_state = {n: copy.deepcopy(models[n].obj.state_dict()) for n in spec.trained}
    without_improvement = 0
    stopped_early = False
    batch = min(spec.batch_size, n_train)
    with tqdm(total=spec.n_iterations, desc=f"train {name}", unit="it", disable=not progress) as bar:
        for iteration in range(1, spec.n_iterations + 1):
            index = torch.as_tensor(rng.choice(n_train, size=batch, replace=False))
            optimizer.zero_grad()
            loss = task.batch_loss(loss_fn, index)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            job["loss"]["iterations"].append(iteration)
            job["loss"]["values"].append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", **{metric_names[0]: f"{best_score:.3f}"})
            if iteration % spec.validation_interval == 0 or iteration == spec.n_iterations:
                score = validation_point(iteration)
                if score > best_score:
                    best_score, without_improvement = score, 0
                    best = {"iteration": iteration, "values": job["validations"][-1]["values"]}
                    best_state = {n: copy.deepcopy(models[n].obj.state_dict()) for n in spec.trained}
                else:
                    without_improvement += 1
                    if spec.no_improve_then_stop and without_improvement >= spec.no_improve_then_stop:
                        stopped_early = True
                        break
    job.update(best=best, stopped_early=stopped_early, iterations=iteration, weights=list(weight_log.values()))
    files = []
    if best["iteration"] > 0:
        for n in spec.trained:
            files.append(save_weights(plan, n, best_state[n]))
    job["weight_files"] = files
    job["yaml_change"] = yaml_change(plan, files)
    job["plots"] = plots.write(job, plan.registry.data_dir / "trainings" / name)
    job["status"], job["finished"] = "done", _now()
    own[TRAININGS].replace_one({"_id": job_id}, job)
    own[METRICS].insert_one({"kind": "training", "training": name, "validation_set": spec.validation_set,
                             "values": [{"metric": m, "before": b, "best": a} for m, b, a in
                                        zip(metric_names, job["before"]["values"], best["values"])],
                             "job": job_id, "at": _now()})
    job["_id"] = job_id
    return job


def _spec_doc(spec: TrainingSpec) -> dict:
    doc = asdict(spec)
    doc["models"], doc["metrics"] = list(spec.models), list(spec.metrics)
    return doc


def save_weights(plan: Plan, model: str, state: dict) -> dict:
    """`<data_dir>/weights/<model>-<sha256[:12]>.pt`: the name changes with the content, never overwritten."""
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    folder = plan.registry.data_dir / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}-{digest[:12]}.pt"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    relative = os.path.relpath(path, plan.registry.folder)
    return {"model": model, "path": str(path), "relative": relative, "sha256": digest}


def yaml_change(plan: Plan, files: list[dict]) -> str:
    if not files:
        return ""
    lines = ["models:"]
    for f in files:
        lines += [f"  {f['model']}:", f"    weights: {f['relative']}"]
    return "\n".join(lines)


def apply_weights(plan: Plan, files: list[dict]) -> None:
    """Write `weights: PATH` into each model of the registry file, keeping the rest of the text as it is.

    Re-validated afterwards: if the result does not load, the file is put back and the error raised.
    """
    from modelstream import registry

    path = plan.registry.path
    original = path.read_text()
    lines = original.splitlines(keepends=True)
    for f in sorted(files, key=lambda f: -plan.registry.models[f["model"]].line):
        spec = plan.registry.models[f["model"]]
        value = f'"{f["relative"]}"'
        _set_weights(lines, spec.name, spec.line, value)
    path.write_text("".join(lines))
    try:
        registry.load(path)
    except ModelstreamError:
        path.write_text(original)
        raise


def _set_weights(lines: list[str], model: str, line: int, value: str) -> None:
    """Replace the model's `weights:` value, or add the key: into its flow mapping `{...}`, or as a block key."""
    i = line - 1
    weights = re.compile(r"(\bweights\s*:\s*)(\"[^\"]*\"|'[^']*'|[^,}\s#]+)")
    flow = re.search(rf"^\s*[\"']?{re.escape(model)}[\"']?\s*:\s*\{{", lines[i])
    if flow:
        depth, j, column = 0, i, flow.end() - 1
        while j < len(lines):
            text = lines[j]
            for k in range(column, len(text)):
                depth += {"{": 1, "}": -1}.get(text[k], 0)
                if depth == 0:
                    break
            found = weights.search(text, column, k + 1 if depth == 0 else len(text))
            if found:
                lines[j] = text[:found.start(2)] + value + text[found.end(2):]
                return
            if depth == 0:
                break
            j, column = j + 1, 0
        lines[i] = lines[i][:flow.end()] + f"weights: {value}, " + lines[i][flow.end():].lstrip(" ")
        return
    indent = re.match(r"^(\s*)", lines[i])[1]
    j = i
    while j < len(lines) and (not lines[j].strip() or re.match(rf"^{indent}\S", lines[j])
                              or lines[j].startswith(indent + " ")):
        found = re.match(rf"^{indent}weights\s*:\s*", lines[j])
        if found:
            lines[j] = lines[j][:found.end()] + value + "\n"
            return
        j += 1
    lines.insert(i, f"{indent}weights: {value}\n")


def latest_job(db: Database, plan: Plan, name: str) -> dict | None:
    return own_database(db, plan.registry)[TRAININGS].find_one({"training": name, "status": "done"},
                                                              sort=[("started", -1)])
