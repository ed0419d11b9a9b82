"""Registry specs: validated, typed views of the YAML. Every problem names its file and line.

`parse` turns the Located tree from `source.read` into frozen dataclasses. It collects every
error it can find in one pass and raises them together, so a user fixes a file in one go.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelstream.errors import ConfigError, ConfigErrors
from modelstream.registry.source import Located

MEASURES = ("cosine", "dot", "l2")
INDEX_TYPES = ("flat", "hnsw", "ivf")
STORES = ("inline", "collection")
VECTOR_FORMATS = ("binary", "array")
BASE_KEY = "_base"  # the tutorial's key for "the whole document"


@dataclass(frozen=True)
class DatabaseSpec:
    uri: str | None = None  # None: start the embedded server
    name: str = "modelstream"
    embedded_port: int | None = None  # None: any free port


@dataclass(frozen=True)
class ApiSpec:
    listen: str | None = "127.0.0.1:7070"
    unix: str | None = None
    token: str | None = None
    max_line_bytes: int = 1 << 20
    max_connections: int = 256
    idle_timeout_s: float = 300.0
    request_timeout_s: float = 30.0  # a request line must arrive, and its op answer, within this
    metrics_listen: str | None = None  # HOST:PORT of an HTTP /metrics endpoint (Prometheus)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    object: str  # "module:attr", or another model's name (then `shares` names the owner)
    key: str
    collection: str
    args: Any = None
    features: dict[str, str] = field(default_factory=dict)
    filter: dict | None = None
    active: bool = True
    batch_size: int = 64
    max_wait_ms: int = 20
    device: str = "auto"
    vector: str = "binary"
    line: int = 0
    shares: str | None = None  # the model whose loaded object this one uses
    weights: str | None = None  # a state_dict file (torch.save) loaded after instantiation (the owner's, if shared)
    weights_sha256: str | None = None  # part of the version: new weights recompute the outputs

    def output_path(self) -> str:
        """Where this model's output lives inside `_outputs` (or the side document)."""
        return f"_outputs.{self.key}.{self.name}"


@dataclass(frozen=True)
class IndexSpec:
    name: str
    models: tuple[str, ...]
    measure: str = "cosine"
    type: str = "flat"
    line: int = 0
    params: dict = field(default_factory=dict)  # m, ef_construction, ef_search (hnsw); nlist, nprobe (ivf)

    @property
    def source_model(self) -> str:
        """The first model fills the index; the others embed queries."""
        return self.models[0]


@dataclass(frozen=True)
class OutputsSpec:
    store: str = "inline"
    collections: dict[str, str] = field(default_factory=dict)
    database: str | None = None  # the daemon's own collections live here (default: the watched database)

    def store_for(self, collection: str) -> str:
        return self.collections.get(collection, self.store)


@dataclass(frozen=True)
class TypeSpec:
    name: str
    object: str  # "module:Class" with decode(bytes) (and encode(value)), as the tutorial's create_type
    line: int = 0


@dataclass(frozen=True)
class FetchSpec:
    """How `_content.url` values are fetched (see content/fetch.py)."""
    workers: int = 8
    timeout_s: float = 10.0
    max_bytes: int = 20 << 20
    retries: int = 2


@dataclass(frozen=True)
class ValidationSpec:
    """`validation:` - the train/valid fold of a document is a pure function of its `_id` and `ratio`."""
    ratio: float = 0.1  # the share of documents in the valid fold (see training/folds.py)


TRAINING_KINDS = ("semantic_index", "imputation")
BUILTIN_LOSSES = ("ranking", "bce", "autoregressive")
_BUILTIN_METRIC = re.compile(r"p_at_[1-9][0-9]*|jaccard")


@dataclass(frozen=True)
class TrainingSpec:
    """`trainings.<name>`: what `modelstream train NAME` runs (see training/jobs.py)."""
    name: str
    kind: str  # semantic_index: models [document side, query side]; imputation: models [model], target
    models: tuple[str, ...]
    use_grads: dict[str, bool]
    loss: str  # ranking, bce, autoregressive, or `module:attr`
    metrics: tuple[str, ...]  # p_at_K, jaccard, or `module:attr`
    validation_set: str
    measure: str = "cosine"  # cosine, dot, l2, or `module:function` (x, y) -> similarity matrix
    target: str | None = None
    pos_weight: Any = None  # bce: a number, a list (one per output), or "auto" (negatives/positives, train fold)
    lr: float = 0.001
    batch_size: int = 64
    n_iterations: int = 200
    validation_interval: int = 20
    no_improve_then_stop: int | None = 5  # validations without a better first metric; None: never stop early
    seed: int = 0
    line: int = 0

    @property
    def trained(self) -> tuple[str, ...]:
        return tuple(m for m in self.models if self.use_grads.get(m))


@dataclass(frozen=True)
class Registry:
    path: Path
    database: DatabaseSpec
    api: ApiSpec
    data_dir: Path
    models: dict[str, ModelSpec]
    indexes: dict[str, IndexSpec]
    outputs: OutputsSpec
    snapshot_every_s: float = 300.0  # index snapshots; also written at shutdown and on reload
    types: tuple[TypeSpec, ...] = ()  # content types beyond the built-ins
    fetch: FetchSpec = FetchSpec()
    validation: ValidationSpec = ValidationSpec()
    trainings: dict[str, TrainingSpec] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def collections(self) -> list[str]:
        return sorted({m.collection for m in self.models.values() if m.active})


class _Errors:
    """Collects ConfigErrors for one file."""

    def __init__(self, file: str):
        self.file = file
        self.items: list[ConfigError] = []

    def add(self, message: str, line: int | None, hint: str | None = None) -> None:
        self.items.append(ConfigError(message, file=self.file, line=line, hint=hint))

    def unknown_keys(self, mapping: Located, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
                self.add(f"unknown key {key!r} in {where}", mapping.line_of(key), hint)

    def typed(self, mapping: Located, key: str, kinds: tuple[type, ...], where: str, default: Any = None) -> Any:
        if key not in mapping or mapping[key] is None:
            return default
        value = mapping[key]
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__.replace("Located", "mapping").replace("dict", "mapping") for k in kinds)
            self.add(f"{where}.{key} must be {names}, not {type(value).__name__} ({value!r})", mapping.line_of(key))
            return default
        return value

    def choice(self, mapping: Located, key: str, choices: tuple[str, ...], where: str, default: str) -> str:
        value = self.typed(mapping, key, (str,), where, default)
        if value not in choices:
            self.add(f"{where}.{key} is {value!r}", mapping.line_of(key), f"choose one of: {', '.join(choices)}")
            return default
        return value

    def section(self, root: Located, key: str) -> Located:
        value = root.get(key)
        if value is None:
            return Located()
        if not isinstance(value, Located):
            self.add(f"{key} must be a mapping", root.line_of(key))
            return Located()
        return value


TOP_KEYS = ("database", "data_dir", "api", "models", "indexes", "outputs", "collection", "snapshot_every_s",
            "types", "fetch", "validation", "trainings")
FETCH_KEYS = ("workers", "timeout_s", "max_bytes", "retries")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
DATABASE_KEYS = ("uri", "name", "embedded")
API_KEYS = ("listen", "unix", "token", "max_line_bytes", "max_connections", "idle_timeout_s", "request_timeout_s",
            "metrics_listen")
MODEL_KEYS = ("object", "args", "collection", "key", "features", "filter", "active", "batch_size",
              "max_wait_ms", "device", "vector", "weights")
TRAINING_KEYS = ("kind", "models", "model", "target", "use_grads", "loss", "measure", "metrics", "validation_set",
                 "lr", "batch_size", "n_iterations", "validation_interval", "no_improve_then_stop", "pos_weight",
                 "seed")
INDEX_PARAMS = ("m", "ef_construction", "ef_search", "nlist", "nprobe")
INDEX_KEYS = ("models", "measure", "type", *INDEX_PARAMS)
OUTPUTS_KEYS = ("store", "collections", "database")


def parse(root: Located, path: Path) -> Registry:
    """Validate the whole tree; raise ConfigErrors listing every problem found."""
    errors = _Errors(str(path))
    errors.unknown_keys(root, TOP_KEYS, "the registry")
    folder = path.parent

    db = errors.section(root, "database")
    errors.unknown_keys(db, DATABASE_KEYS, "database")
    embedded = errors.section(db, "embedded")
    errors.unknown_keys(embedded, ("port",), "database.embedded")
    database = DatabaseSpec(
        uri=errors.typed(db, "uri", (str,), "database") or None,
        name=errors.typed(db, "name", (str,), "database", "modelstream"),
        embedded_port=errors.typed(embedded, "port", (int,), "database.embedded"),
    )

    data_dir = folder / errors.typed(root, "data_dir", (str,), "the registry", ".modelstream")

    api = _parse_api(errors, errors.section(root, "api"), folder, data_dir)

    outputs_map = errors.section(root, "outputs")
    errors.unknown_keys(outputs_map, OUTPUTS_KEYS, "outputs")
    per_collection = errors.section(outputs_map, "collections")
    for coll, store in per_collection.items():
        if store not in STORES:
            errors.add(f"outputs.collections.{coll} is {store!r}", per_collection.line_of(coll),
                       f"choose one of: {', '.join(STORES)}")
    outputs = OutputsSpec(
        store=errors.choice(outputs_map, "store", STORES, "outputs", "inline"),
        collections={str(k): v for k, v in per_collection.items() if v in STORES},
        database=errors.typed(outputs_map, "database", (str,), "outputs"),
    )

    default_collection = errors.typed(root, "collection", (str,), "the registry")
    models = _parse_models(errors, errors.section(root, "models"), default_collection, folder)
    indexes = _parse_indexes(errors, errors.section(root, "indexes"), models)

    snapshot_every_s = float(errors.typed(root, "snapshot_every_s", (int, float), "the registry", 300))
    types_map = errors.section(root, "types")
    types = []
    for name, target in types_map.items():
        if not isinstance(target, str) or ":" not in target:
            errors.add(f"types.{name} must be an import path `module:Class`, not {target!r}",
                       types_map.line_of(name), "a class with decode(bytes) and encode(value)")
        else:
            types.append(TypeSpec(str(name), target, types_map.line_of(name) or 0))
    fetch = _parse_fetch(errors, errors.section(root, "fetch"))
    validation_map = errors.section(root, "validation")
    errors.unknown_keys(validation_map, ("ratio",), "validation")
    validation = ValidationSpec(ratio=float(errors.typed(validation_map, "ratio", (int, float), "validation", 0.1)))
    if not 0 < validation.ratio < 1:
        errors.add(f"validation.ratio must be between 0 and 1, not {validation.ratio}",
                   validation_map.line_of("ratio"), "the share of documents in the valid fold, e.g. 0.1")
    trainings = _parse_trainings(errors, errors.section(root, "trainings"), models)
    if errors.items:
        raise ConfigErrors(errors.items)
    return Registry(path=path, database=database, api=api, data_dir=data_dir, models=models,
                    indexes=indexes, outputs=outputs,
                    snapshot_every_s=snapshot_every_s, types=tuple(types), fetch=fetch,
                    validation=validation, trainings=trainings)


def _parse_api(errors: _Errors, section: Located, folder: Path, data_dir: Path) -> ApiSpec:
    errors.unknown_keys(section, API_KEYS, "api")
    unix = errors.typed(section, "unix", (str,), "api")
    spec = ApiSpec(
        listen=None if "listen" in section and section["listen"] is None
        else errors.typed(section, "listen", (str,), "api", "127.0.0.1:7070"),
        unix=str(folder / unix) if unix else str(data_dir / "api.sock"),
        token=errors.typed(section, "token", (str,), "api") or None,
        max_line_bytes=errors.typed(section, "max_line_bytes", (int,), "api", 1 << 20),
        max_connections=errors.typed(section, "max_connections", (int,), "api", 256),
        idle_timeout_s=float(errors.typed(section, "idle_timeout_s", (int, float), "api", 300.0)),
        request_timeout_s=float(errors.typed(section, "request_timeout_s", (int, float), "api", 30.0)),
        metrics_listen=errors.typed(section, "metrics_listen", (str,), "api"),
    )
    # Zero or less would refuse every request (or, for the line size and connections, every client).
    for key, hint in (("request_timeout_s", "seconds a request may take, e.g. 30"),
                      ("idle_timeout_s", "seconds an idle connection stays open, e.g. 300"),
                      ("max_line_bytes", "bytes in one request line, e.g. 1048576"),
                      ("max_connections", "connections served at once, e.g. 256")):
        if getattr(spec, key) <= 0:
            errors.add(f"api.{key} must be positive, not {getattr(spec, key)}", section.line_of(key), hint)
    return spec


def _parse_fetch(errors: _Errors, section: Located) -> FetchSpec:
    errors.unknown_keys(section, FETCH_KEYS, "fetch")
    max_bytes = errors.typed(section, "max_bytes", (int, str), "fetch", 20 << 20)
    if isinstance(max_bytes, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", max_bytes, re.IGNORECASE)
        if match:
            max_bytes = int(float(match[1]) * _SIZE_UNITS[match[2].lower()])
        else:
            errors.add(f"fetch.max_bytes is {max_bytes!r}", section.line_of("max_bytes"),
                       "a number of bytes, or e.g. 512KB, 20MB, 1GB")
            max_bytes = 20 << 20
    spec = FetchSpec(
        workers=errors.typed(section, "workers", (int,), "fetch", 8),
        timeout_s=float(errors.typed(section, "timeout_s", (int, float), "fetch", 10.0)),
        max_bytes=max_bytes,
        retries=errors.typed(section, "retries", (int,), "fetch", 2),
    )
    for key, value, low in (("workers", spec.workers, 1), ("retries", spec.retries, 0),
                            ("max_bytes", spec.max_bytes, 1)):
        if value < low:
            errors.add(f"fetch.{key} must be at least {low}", section.line_of(key))
    if spec.timeout_s <= 0:
        errors.add("fetch.timeout_s must be positive", section.line_of("timeout_s"))
    return spec


def _parse_models(errors: _Errors, section: Located, default_collection: str | None,
                  folder: Path = Path(".")) -> dict[str, ModelSpec]:
    raw: dict[str, Located] = {}
    for name, body in section.items():
        if not isinstance(body, Located):
            errors.add(f"models.{name} must be a mapping with at least `object` and `key`", section.line_of(name))
            continue
        errors.unknown_keys(body, MODEL_KEYS, f"models.{name}")
        raw[str(name)] = body

    owners = _resolve_shared_objects(errors, raw)
    models: dict[str, ModelSpec] = {}
    for name, body in raw.items():
        where = f"models.{name}"
        obj = errors.typed(body, "object", (str,), where)
        if obj is None:
            errors.add(f"{where} has no `object`", body.line,
                       "give an import path `module:attr`, or the name of another model to share its object")
            continue
        owner = owners.get(name)
        if ":" not in obj and owner is None:
            continue  # a broken object reference, already reported
        owner_body = raw.get(owner, body) if owner else body
        key = errors.typed(body, "key", (str,), where)
        if key is None:
            errors.add(f"{where} has no `key`", body.line, "name the document field the model reads, or `_base`")
            continue
        collection = _inherited_collection(name, raw, owners, set()) or default_collection
        if collection is None:
            errors.add(f"{where} has no `collection`", body.line,
                       "add `collection: NAME` to the model, or a top-level `collection:` default")
            continue
        features = errors.typed(body, "features", (Located,), where, Located())
        for field_name, upstream in features.items():
            if upstream not in raw:
                errors.add(f"{where}.features.{field_name} refers to unknown model {upstream!r}",
                           features.line_of(field_name), _did_you_mean(str(upstream), raw))
        weights, weights_sha256 = _weights(errors, owner_body, f"models.{owner}" if owner else where, folder)
        if owner and body.get("weights") is not None:
            errors.add(f"{where}.weights: this model shares {owner!r}'s object, so the weights are {owner!r}'s",
                       body.line_of("weights"), f"move `weights:` to models.{owner}")
        batch_size = errors.typed(body, "batch_size", (int,), where, 64)
        if batch_size < 1:
            errors.add(f"{where}.batch_size must be at least 1", body.line_of("batch_size"))
        models[name] = ModelSpec(
            name=name,
            object=obj if owner is None else errors.typed(owner_body, "object", (str,), f"models.{owner}"),
            shares=owner,
            key=key,
            collection=collection,
            args=body.get("args", owner_body.get("args") if owner else None),
            features={str(k): str(v) for k, v in features.items()},
            filter=errors.typed(body, "filter", (Located,), where),
            active=errors.typed(body, "active", (bool,), where, True),
            batch_size=max(batch_size, 1),
            max_wait_ms=errors.typed(body, "max_wait_ms", (int,), where, 20),
            device=errors.typed(body, "device", (str,), where, "auto"),
            vector=errors.choice(body, "vector", VECTOR_FORMATS, where, "binary"),
            line=body.line,
            weights=weights,
            weights_sha256=weights_sha256,
        )
    for model in models.values():
        for upstream in model.features.values():
            if upstream in models and models[upstream].collection != model.collection:
                errors.add(f"models.{model.name} reads {upstream!r}, which runs on another collection "
                           f"({models[upstream].collection!r})", model.line,
                           "features chain models of the same collection")
    return models


def _weights(errors: _Errors, body: Located, where: str, folder: Path) -> tuple[str | None, str | None]:
    """A model's `weights:` file (relative to the registry's folder) and its sha256 (part of the version)."""
    relative = errors.typed(body, "weights", (str,), where)
    if not relative:
        return None, None
    path = folder / relative
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        errors.add(f"{where}.weights: cannot read {str(path)!r}: {exc.strerror or exc}", body.line_of("weights"),
                   "a state_dict saved with torch.save, e.g. by `modelstream train`")
        return None, None
    return str(path), digest


def _training_measure(errors: _Errors, body: Located, where: str) -> str:
    """A built-in measure, or a user's `module:function` (x, y) -> similarity matrix (only trainings: an
    index's measure must be one FAISS computes)."""
    measure = body.get("measure", "cosine")
    if isinstance(measure, str) and ":" in measure:
        return measure
    return errors.choice(body, "measure", MEASURES, where, "cosine")


def _parse_trainings(errors: _Errors, section: Located, models: dict[str, ModelSpec]) -> dict[str, TrainingSpec]:
    trainings: dict[str, TrainingSpec] = {}
    for name, body in section.items():
        where = f"trainings.{name}"
        if not isinstance(body, Located):
            errors.add(f"{where} must be a mapping with `kind`", section.line_of(name))
            continue
        errors.unknown_keys(body, TRAINING_KEYS, where)
        count = len(errors.items)
        kind = errors.choice(body, "kind", TRAINING_KINDS, where, "semantic_index")
        if "kind" not in body:
            errors.add(f"{where} has no `kind`", body.line, f"choose one of: {', '.join(TRAINING_KINDS)}")
        target = errors.typed(body, "target", (str,), where)
        if kind == "semantic_index":
            names = body.get("models")
            if not isinstance(names, list) or len(names) != 2 or not all(isinstance(n, str) for n in names):
                errors.add(f"{where}.models must list two models: the document side, then the query side",
                           body.line_of("models"), "as in an index: [clip_projection, average_glove]")
                names = []
        else:
            model = errors.typed(body, "model", (str,), where)
            names = [model] if model else []
            if not model:
                errors.add(f"{where} has no `model`", body.line, "the model to train, e.g. attribute_predictor")
            if not target:
                errors.add(f"{where} has no `target`", body.line, "the model whose output is the prediction target")
        referenced = list(names) + ([target] if target else [])
        for n in referenced:
            if n not in models:
                errors.add(f"{where} refers to unknown model {n!r}", body.line_of("target" if n == target else
                           ("models" if kind == "semantic_index" else "model")), _did_you_mean(n, models))
        use_grads_map = errors.typed(body, "use_grads", (Located,), where, None)
        if use_grads_map is None:
            use_grads = {names[0]: True} if names else {}
        else:
            use_grads = {}
            for n, flag in use_grads_map.items():
                if n not in names:
                    errors.add(f"{where}.use_grads names {n!r}, which this training does not train",
                               use_grads_map.line_of(n), f"its models: {', '.join(names)}")
                elif not isinstance(flag, bool):
                    errors.add(f"{where}.use_grads.{n} must be true or false", use_grads_map.line_of(n))
                else:
                    use_grads[str(n)] = flag
            if names and not any(use_grads.values()):
                errors.add(f"{where}.use_grads trains nothing", body.line_of("use_grads"),
                           "set `use_grads: {MODEL: true}` for the model whose weights should learn")
        default_loss = "ranking" if kind == "semantic_index" else "bce"
        loss = errors.typed(body, "loss", (str,), where, default_loss)
        if loss not in BUILTIN_LOSSES and ":" not in loss:
            errors.add(f"{where}.loss is {loss!r}", body.line_of("loss"),
                       f"one of {', '.join(BUILTIN_LOSSES)}, or an import path `module:function`")
        metrics = body.get("metrics", ["p_at_10"] if kind == "semantic_index" else ["jaccard"])
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            errors.add(f"{where}.metrics must be a non-empty list", body.line_of("metrics"),
                       "e.g. [p_at_10], [jaccard], or import paths `module:function`")
            metrics = []
        for metric in metrics:
            if not _BUILTIN_METRIC.fullmatch(metric) and ":" not in metric:
                errors.add(f"{where}.metrics: unknown metric {metric!r}", body.line_of("metrics"),
                           "p_at_K (e.g. p_at_10), jaccard, or an import path `module:function`")
        validation_set = errors.typed(body, "validation_set", (str,), where)
        if not validation_set:
            errors.add(f"{where} has no `validation_set`", body.line,
                       "create one with `modelstream validation create NAME ...` and name it here")
        pos_weight = body.get("pos_weight")
        if pos_weight is not None and pos_weight != "auto" and not (
                isinstance(pos_weight, (int, float, list)) and not isinstance(pos_weight, bool)):
            errors.add(f"{where}.pos_weight must be a number, a list of numbers, or auto", body.line_of("pos_weight"))
        spec = TrainingSpec(
            name=str(name), kind=kind, models=tuple(names), use_grads=use_grads, loss=loss,
            metrics=tuple(metrics), validation_set=validation_set or "",
            measure=_training_measure(errors, body, where), target=target, pos_weight=pos_weight,
            lr=float(errors.typed(body, "lr", (int, float), where, 0.001)),
            batch_size=errors.typed(body, "batch_size", (int,), where, 64),
            n_iterations=errors.typed(body, "n_iterations", (int,), where, 200),
            validation_interval=errors.typed(body, "validation_interval", (int,), where, 20),
            no_improve_then_stop=errors.typed(body, "no_improve_then_stop", (int,), where, 5),
            seed=errors.typed(body, "seed", (int,), where, 0),
            line=body.line,
        )
        for key in ("batch_size", "n_iterations", "validation_interval"):
            if getattr(spec, key) < 1:
                errors.add(f"{where}.{key} must be at least 1", body.line_of(key))
        if spec.lr <= 0:
            errors.add(f"{where}.lr must be positive", body.line_of("lr"))
        if len(errors.items) == count:
            trainings[spec.name] = spec
    return trainings


def _inherited_collection(name: str, raw: dict[str, Located], owners: dict[str, str], seen: set) -> str | None:
    """A model's collection: its own, else its object owner's, else its upstream model's (as in the tutorial)."""
    if name in seen or name not in raw:
        return None
    seen.add(name)
    own = raw[name].get("collection")
    if isinstance(own, str):
        return own
    candidates = [owners[name]] if name in owners else []
    features = raw[name].get("features")
    if isinstance(features, dict):
        candidates += [str(v) for v in features.values()]
    for other in candidates:
        found = _inherited_collection(other, raw, owners, seen)
        if found:
            return found
    return None


def _resolve_shared_objects(errors: _Errors, raw: dict[str, Located]) -> dict[str, str]:
    """Map each model whose `object` names another model to the model that owns the object."""
    owners: dict[str, str] = {}
    for name, body in raw.items():
        obj = body.get("object")
        if not isinstance(obj, str) or ":" in obj:
            continue
        seen = [name]
        current = obj
        while True:
            if current not in raw:
                errors.add(f"models.{name}.object {obj!r} is neither an import path nor a model",
                           body.line_of("object"),
                           _did_you_mean(obj, raw) or "write `module:attr`, e.g. `examples.models:CLIP`")
                break
            if current in seen:
                errors.add(f"models share objects in a cycle: {' -> '.join(seen + [current])}",
                           body.line_of("object"), "one of them must name an import path")
                break
            target = raw[current].get("object")
            if not isinstance(target, str) or ":" in target:
                owners[name] = current
                break
            seen.append(current)
            current = target
    return owners


def _parse_indexes(errors: _Errors, section: Located, models: dict[str, ModelSpec]) -> dict[str, IndexSpec]:
    indexes: dict[str, IndexSpec] = {}
    for name, body in section.items():
        where = f"indexes.{name}"
        if not isinstance(body, Located):
            errors.add(f"{where} must be a mapping with `models`", section.line_of(name))
            continue
        errors.unknown_keys(body, INDEX_KEYS, where)
        names = body.get("models")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            errors.add(f"{where}.models must be a non-empty list of model names", body.line_of("models"),
                       "the first model fills the index; the others embed queries")
            continue
        unknown = [n for n in names if n not in models]
        for n in unknown:
            errors.add(f"{where}.models refers to unknown model {n!r}", body.line_of("models"),
                       _did_you_mean(n, models))
        if unknown:
            continue
        if not models[names[0]].active:
            errors.add(f"{where}: its first model {names[0]!r} is not active, so nothing would fill it",
                       body.line_of("models"), "put the active model first; query models after it")
        indexes[str(name)] = IndexSpec(
            name=str(name),
            models=tuple(names),
            measure=errors.choice(body, "measure", MEASURES, where, "cosine"),
            type=errors.choice(body, "type", INDEX_TYPES, where, "flat"),
            line=body.line,
            params={p: errors.typed(body, p, (int,), where) for p in INDEX_PARAMS if body.get(p) is not None},
        )
    return indexes


def _did_you_mean(name: str, known: dict) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else (f"known models: {', '.join(known)}" if known else None)
