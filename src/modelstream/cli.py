"""The `modelstream` command: the daemon (serve), registry checks, and clients of a running daemon."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from modelstream import log, registry
from modelstream.daemon.documents import own_database, pages
from modelstream.errors import ApiError, ConfigErrors, ModelstreamError

app = typer.Typer(help="Run ML models on live MongoDB data: outputs written back, vector indexes kept in step.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The registry YAML.", exists=False)]
OptionalConfig = Annotated[Optional[Path], typer.Option("--config", "-c", help="Registry YAML (to find the socket).")]
SocketOpt = Annotated[Optional[str], typer.Option("--socket", help="HOST:PORT or a Unix socket path.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _load(config: Path) -> registry.Plan:
    try:
        return registry.load(config)
    except ConfigErrors as exc:
        _fail(str(exc), 2)
    except ModelstreamError as exc:
        _fail(str(exc), 2)


@app.command()
def check(config: ConfigOpt, imports: Annotated[bool, typer.Option(help="Also import every model.")] = True) -> None:
    """Validate a registry; exit non-zero with file:line errors. Imports the models too (--no-imports skips)."""
    plan = _load(config)
    if imports:
        from modelstream.content import reader_for

        try:
            registry.load_models(plan.registry, plan.versions)
            reader_for(plan.registry)  # user `types:` import too
        except ConfigErrors as exc:
            _fail(str(exc), 2)
    reg = plan.registry
    typer.echo(f"{config}: ok: {len(reg.models)} models ({', '.join(plan.order)}), {len(reg.indexes)} indexes")


@app.command()
def serve(config: ConfigOpt,
          log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
          json_logs: Annotated[Optional[bool], typer.Option("--json-logs/--console-logs",
                                                            help="Default: JSON unless on a terminal.")] = None,
          ) -> None:
    """Run the daemon and the socket API until SIGTERM/SIGINT (once: finish the batch, checkpoint, exit 0)."""
    from modelstream.api.ops import Operations
    from modelstream.api.server import ApiServer
    from modelstream.daemon.service import Daemon

    log.configure(log_level, json=json_logs)
    logger = log.get("modelstream.serve")
    plan = _load(config)
    reg = plan.registry
    reg.data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(reg.data_dir / "daemon.lock", "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _fail(f"another modelstream daemon is serving {reg.data_dir} (lock {reg.data_dir / 'daemon.lock'})", 3)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # second signal: at once
        logger.info("stopping: finishing the batch in hand", signal=signal.Signals(signum).name)
        stop.set()

    reload_requested = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    try:
        daemon = Daemon.open(plan)
    except ModelstreamError as exc:
        _fail(str(exc), 2)
    try:
        api = ApiServer(reg.api, Operations(daemon), registry_file=str(reg.path))
        api.start()
    except (ModelstreamError, OSError) as exc:
        daemon.close()
        _fail(f"cannot start the API: {exc}", 2)
    metrics_server = _start_metrics(reg.api.metrics_listen, daemon, logger)
    daemon.start()
    logger.info("serving", registry=str(reg.path), database=daemon.uri, api=api.addresses)
    while not stop.wait(0.5):
        if reload_requested.is_set():
            reload_requested.clear()
            _reload(daemon, config, logger)
        if daemon.thread is not None and not daemon.thread.is_alive():
            break
    failed = daemon.stats.phase == "failed"
    api.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    daemon.close()
    logger.info("stopped", failed=failed)
    raise typer.Exit(1 if failed else 0)


def _start_metrics(listen: Optional[str], daemon, logger):
    """Prometheus scrapes `GET /metrics` at api.metrics_listen (HOST:PORT); None when not configured."""
    if not listen:
        return None
    from prometheus_client import start_http_server

    from modelstream.api.server import parse_listen

    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=daemon.stats.registry)
    logger.info("metrics listening", address=f"{host}:{server.server_address[1]}")
    return server


def _reload(daemon, config: Path, logger) -> None:
    """SIGHUP: re-read the registry; validated first, so a bad file changes nothing and says why."""
    try:
        daemon.reload_file()
    except ModelstreamError as exc:
        logger.error("reload rejected: the running registry stays in force", error=str(exc))


# -- clients of a running daemon --------------------------------------------------------------------


def _address(config: Optional[Path], socket_: Optional[str]) -> tuple[str, Optional[str]]:
    token = os.environ.get("MODELSTREAM_TOKEN")
    if socket_:
        return socket_, token
    if config is not None:
        api = _load(config).registry.api
        if api.unix and Path(api.unix).exists():
            return api.unix, api.token or token
        if api.listen:
            return api.listen, api.token or token
    return os.environ.get("MODELSTREAM_SOCKET", "127.0.0.1:7070"), token


def _client(config: Optional[Path], socket_: Optional[str]):
    from modelstream.api.client import Client

    address, token = _address(config, socket_)
    try:
        return Client(address, token=token).connect()
    except OSError as exc:
        _fail(f"cannot reach the daemon at {address}: {exc.strerror or exc} "
              "(hint: is `modelstream serve` running? pick it with --socket or -c)")


def _call(config, socket_, fn) -> Any:
    client = _client(config, socket_)
    try:
        return fn(client)
    except ApiError as exc:
        _fail(f"error ({exc.code}): {exc}")
    finally:
        client.close()


def _print_json(value: Any) -> None:
    from modelstream.api.protocol import to_plain

    typer.echo(json.dumps(to_plain(value), indent=2))


@app.command()
def query(text: Annotated[str, typer.Argument(help="What to look for; embedded by the index's query model.")],
          config: OptionalConfig = None, socket_: SocketOpt = None,
          index: Annotated[Optional[str], typer.Option(help="Index name (default: the only one).")] = None,
          field: Annotated[Optional[str], typer.Option(help="Query field (default: the index's query key).")] = None,
          n: Annotated[int, typer.Option("-n", help="How many results.")] = 5,
          filter_: Annotated[Optional[str], typer.Option("--filter", help="MongoDB query, as JSON.")] = None,
          show: Annotated[Optional[str], typer.Option(help="Document field to print (default: the query field).")]
          = None,
          as_json: JsonOpt = False) -> None:
    """Search an index by text (or any value a query model reads) and print the nearest documents."""
    def run(client):
        models = {m["name"]: m for m in client.models()}
        status = client.status()
        name = index or (next(iter(status["indexes"])) if len(status["indexes"]) == 1 else None)
        if name is None:
            raise ApiError("bad_request", "several indexes: pick one with --index",
                           hint=", ".join(status["indexes"]))
        query_field = field
        if query_field is None:
            reg_models = [m for m in models.values() if m["key"] != "_base"]
            query_field = reg_models[-1]["key"] if reg_models else "text"
        shown = show or query_field
        results = client.search(name, like={query_field: text}, n=n,
                                filter=json.loads(filter_) if filter_ else None, project=[shown])
        return results, shown

    results, shown = _call(config, socket_, run)
    if as_json:
        _print_json(results)
        return
    typer.echo(f"query: {text}")
    for rank, r in enumerate(results, 1):
        value = r.get("document", {}).get(shown, "")
        typer.echo(f"  {rank}. {r['score']:.3f}  {value}")
    if not results:
        typer.echo("  (no results)")


@app.command()
def status(config: OptionalConfig = None, socket_: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Lag, per-model counts, index sizes, resume point, connection state of a running daemon."""
    snap = _call(config, socket_, lambda c: c.status())
    if as_json:
        _print_json(snap)
        return
    from modelstream.api.protocol import to_plain

    for line in _status_lines(to_plain(snap)):  # Extended JSON (dates, ids) as text, like --json
        typer.echo(line)


def _status_lines(snap: dict) -> list[str]:
    """`modelstream status` for people: a header, then one table of models and one of indexes."""
    lag = snap.get("lag", {})
    queue = snap.get("queue", {"batches": snap.get("queue_depth", 0), "events": 0})
    db = snap["database"]
    lines = [
        f"phase {snap['phase']}  connection {snap['connection']}  uptime {snap['uptime_s']:.0f}s",
        f"database {db['uri']} / {db['name']}" + ("  (embedded)" if db.get("embedded") else ""),
        f"events {snap['events']} in {snap['batches']} batches  lag {snap.get('lag_events', 0)} events, "
        f"behind {lag.get('seconds_behind', 0)}s  queue {queue['batches']} batches ({queue['events']} events)",
        f"scan {snap['scan']['done']}/{snap['scan']['total']}  resume point {_short(snap.get('resume_point'))}",
        "",
        _row(("MODEL", "VERSION", "ACTIVE", "DONE", "FAILED", "IN PROGRESS")),
    ]
    for name, m in snap["models"].items():
        lines.append(_row((name, (m.get("version") or "-")[:12], "yes" if m.get("active", True) else "no",
                           m["done"], m["failed"], m.get("in_progress", 0))))
    lines += ["", _row(("INDEX", "SIZE", "DIM", "MEASURE", "MEMORY"))]
    for name, ix in snap["indexes"].items():
        lines.append(_row((name, ix["size"], ix["dim"], ix["measure"], _bytes(ix.get("bytes", 0)))))
    for job in snap.get("jobs", [])[-5:]:
        progress = f"  {job['done']}/{job['total']}" if "total" in job else ""
        lines.append(f"job {job.get('kind')} {job.get('state')}{progress}")
    if snap.get("last_error"):
        lines += ["", f"last error: {snap['last_error']}"]
    return lines


def _row(cells: tuple) -> str:
    widths = (24, 14, 7, 10, 8, 11)
    return "  ".join(f"{cell!s:<{width}}" for cell, width in zip(cells, widths)).rstrip()


def _short(value: Any, limit: int = 60) -> str:
    if value is None:
        return "none yet"
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n, step = n / 1024, step + 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


@app.command()
def models(config: OptionalConfig = None, socket_: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """The models of a running daemon: active or not, version, counts."""
    listed = _call(config, socket_, lambda c: c.models())
    if as_json:
        _print_json(listed)
        return
    for m in listed:
        state = "active" if m["active"] else "query "
        typer.echo(f"{m['name']:<24} {state} {m['collection']}.{m['key']}  v{m['version']}  "
                   f"done {m['done']} failed {m['failed']}")


@app.command()
def apply(model: Annotated[str, typer.Argument(help="Model name.")],
          doc: Annotated[Optional[str], typer.Option("--doc", help="The document, as JSON.")] = None,
          file: Annotated[Optional[Path], typer.Option("--file", help="A file holding the document JSON.")] = None,
          config: OptionalConfig = None, socket_: SocketOpt = None) -> None:
    """Run one model on a document you give (not stored) and print its output."""
    from bson import json_util

    if (doc is None) == (file is None):
        _fail("give exactly one of --doc JSON or --file PATH")
    text = doc if doc is not None else file.read_text()
    try:
        document = json_util.loads(text)
    except ValueError as exc:
        _fail(f"the document is not JSON: {exc}")
    _print_json(_call(config, socket_, lambda c: c.apply(model, document)))


# -- the database directly: verify, backfill, errors, retry -----------------------------------------------


def _with_database(config: Path, fn) -> Any:
    from modelstream.daemon.service import database

    plan = _load(config)
    try:
        with database(plan) as db:
            return fn(plan, db)
    except ModelstreamError as exc:
        _fail(str(exc), 2)


@app.command()
def verify(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Report documents whose outputs are missing or stale, and orphaned outputs; exit 1 if any."""
    from tqdm import tqdm

    from modelstream.daemon.verify import verify as run_verify

    def run(plan, db):
        total = sum(db[c].estimated_document_count() for c in plan.registry.collections())
        with tqdm(total=total, desc="verifying", unit="doc", disable=as_json) as bar:
            return run_verify(db, plan, bar.update)

    report = _with_database(config, run)
    indexes = _index_check(config, report)
    problems = report.problems + sum(1 for i in indexes.values() if i["size"] != i["expected"])
    if as_json:
        _print_json({"models": {n: vars(m) for n, m in report.models.items()}, "orphaned": report.orphaned,
                     "indexes": indexes, "problems": problems})
    else:
        for m in report.models.values():
            typer.echo(f"{m.model:<24} {m.collection:<16} documents {m.documents:>8}  ok {m.ok:>8}  "
                       f"missing {m.missing:>6}  stale {m.stale:>6}  failed {m.failed:>6}")
        for coll, n in report.orphaned.items():
            typer.echo(f"orphaned side documents in {coll}: {n}")
        for name, i in indexes.items():
            typer.echo(f"index {name}: {i['size']} vectors in the running daemon, {i['expected']} expected")
        if not indexes:
            typer.echo("indexes not checked: no running daemon answered")
        typer.echo("all outputs up to date" if not problems else
                   f"{problems} problems: run `modelstream backfill -c {config}` (or start the daemon)")
    raise typer.Exit(1 if problems else 0)


def _index_check(config: Path, report) -> dict[str, dict]:
    """Index sizes of a running daemon against the documents whose source output is up to date."""
    from modelstream.api.client import Client

    registry_ = _load(config).registry
    api = registry_.api
    address = api.unix if api.unix and Path(api.unix).exists() else api.listen  # this registry's daemon only
    if address is None:
        return {}
    try:
        with Client(address, token=api.token or os.environ.get("MODELSTREAM_TOKEN"), timeout_s=10) as client:
            sizes = client.status()["indexes"]
    except (OSError, ApiError):
        return {}
    specs = registry_.indexes
    return {name: {"size": sizes[name]["size"], "expected": report.models[spec.source_model].ok}
            for name, spec in specs.items() if name in sizes and spec.source_model in report.models}


@app.command()
def backfill(config: ConfigOpt) -> None:
    """Compute every missing or stale output now (what the daemon does at start), with a progress bar."""
    from tqdm import tqdm

    from modelstream.daemon.failures import FailureLog
    from modelstream.daemon.processor import Processor
    from modelstream.daemon.stats import Stats

    log.configure("warning")

    def run(plan, db):
        models = registry.load_models(plan.registry, plan.versions)
        stats = Stats()
        processor = Processor(db, plan, models, {}, FailureLog(own_database(db, plan.registry)), stats)  # no indexes: the daemon owns them
        for coll in plan.registry.collections():
            with tqdm(total=db[coll].estimated_document_count(), desc=f"backfill {coll}", unit="doc") as bar:
                for page in pages(db[coll]):
                    processor.process(coll, page, [])
                    bar.update(len(page))
        return stats.snapshot()["models"]

    counts = _with_database(config, run)
    for name, c in counts.items():
        typer.echo(f"{name:<24} computed {c['done']:>8}  failed {c['failed']:>6}")


@app.command()
def errors(config: ConfigOpt, model: Annotated[Optional[str], typer.Option(help="Only this model.")] = None,
           limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
           as_json: JsonOpt = False) -> None:
    """List documents that could not be processed: model, document, attempts, reason, hint."""
    from modelstream.daemon.failures import FailureLog

    def read(plan, db):
        failures = FailureLog(own_database(db, plan.registry))
        return failures.list(model, limit), failures.count()

    entries = _with_database(config, read)
    listed, total = entries
    if as_json:
        _print_json(listed)
        return
    for e in listed:
        key = e["_id"]
        typer.echo(f"{key['collection']}.{key['model']}  _id {key['doc']}  attempts {e.get('attempts', 1)}  "
                   f"{e.get('error')}" + (f"  (hint: {e['hint']})" if e.get("hint") else ""))
    typer.echo(f"{len(listed)} shown of {total}")


@app.command()
def retry(config: ConfigOpt, model: Annotated[Optional[str], typer.Option(help="Only this model.")] = None,
          socket_: SocketOpt = None) -> None:
    """Re-queue failed documents: a running daemon processes them now; otherwise its next start does."""
    from modelstream.api.client import Client

    address, token = _address(config, socket_)
    try:
        with Client(address, token=token) as client:
            result = client.request("retry", **({"model": model} if model else {}))
        typer.echo(f"retried {result['retried']} documents: {result['failed']} failed again")
        return
    except OSError:
        pass
    except ApiError as exc:
        _fail(f"error ({exc.code}): {exc}")
    from modelstream.daemon.failures import ERRORS

    cleared = _with_database(config, lambda plan, db: own_database(db, plan.registry)[ERRORS].delete_many(
        {"_id.model": model} if model else {}).deleted_count)
    typer.echo(f"no daemon running: cleared {cleared} error entries; the next start retries those documents")


@app.command()
def refresh(model: Annotated[str, typer.Argument(help="The model to recompute (its downstream follows).")],
            config: OptionalConfig = None, socket_: SocketOpt = None) -> None:
    """Recompute one model and everything downstream for all documents, in a running daemon's background."""
    job = _call(config, socket_, lambda c: c.request("refresh", model=model)["job"])
    typer.echo(f"refreshing {', '.join(job['models'])} over {job['total']} documents of {job['collection']}: "
               "follow it with `modelstream status`")


@app.command()
def reload(config: OptionalConfig = None, socket_: SocketOpt = None) -> None:
    """Make a running daemon re-read its registry file, as SIGHUP does (a bad file changes nothing)."""
    job = _follow_job(config, socket_, lambda c: c.request("reload")["job"])
    if job["state"] != "done":
        _fail(f"reload {job['state']}")
    typer.echo("reloaded: changed models recompute in the background, searches keep the old index until then "
               "(`modelstream status`)")


def _follow_job(config, socket_, start, interval_s: float = 1.0) -> dict:
    """Start a daemon job and wait until it leaves its running states; returns its last state."""
    import time

    def follow(client):
        job = start(client)
        while job["state"] in ("running", "reloading"):
            time.sleep(interval_s)
            job = next((j for j in client.status()["jobs"] if j.get("id") == job["id"]), None)
            if job is None:
                _fail("the job left the daemon's status (a restart?): see `modelstream status`")
        return job

    return _call(config, socket_, follow)


@app.command()
def prune(config: ConfigOpt) -> None:
    """Remove outputs of models no longer in the registry (a reload keeps them until you prune)."""
    from modelstream.daemon.prune import prune as run_prune

    removed = _with_database(config, lambda plan, db: run_prune(db, plan))
    for name, count in sorted(removed.items()):
        typer.echo(f"{name}: outputs removed from {count} documents")
    if not removed:
        typer.echo("nothing to prune")


# -- validation sets, validation, training (modelstream.training) ------------------------------------

validation_app = typer.Typer(help="Validation sets: frozen samples of the valid fold.", no_args_is_help=True)
app.add_typer(validation_app, name="validation")


@validation_app.command("create")
def validation_create(
        name: Annotated[str, typer.Argument(help="The set's name (kept in _modelstream.validation.NAME).")],
        config: ConfigOpt,
        collection: Annotated[str, typer.Option("--collection", help="The collection to sample.")],
        sample: Annotated[int, typer.Option("--sample", min=1, help="How many documents of the valid fold.")],
        split: Annotated[Optional[str], typer.Option(
            "--split", help="KEY_FIELD:TARGET_FIELD: freeze only these two fields (default: the whole document).")]
        = None,
        replace: Annotated[bool, typer.Option("--replace", help="Make the set again if it exists.")] = False,
        relevant_by: Annotated[Optional[str], typer.Option(
            "--relevant-by", help="FIELD: documents with the same value of FIELD count as right answers for "
                                  "each other's queries in P@k (default: only the query's own document).")]
        = None,
) -> None:
    """Freeze a deterministic sample of the valid fold (a pure function of _id; user documents are only read)."""
    from modelstream.training.validation import create_set

    fields = None
    if split is not None:
        key, sep, target = split.partition(":")
        if not sep or not key or not target:
            _fail(f"--split must be KEY_FIELD:TARGET_FIELD, not {split!r}", 2)
        fields = (key, target)
    meta = _with_database(config, lambda plan, db: create_set(db, plan, name, collection, sample, fields, replace,
                                                                     relevant_by))
    typer.echo(f"validation set {name!r}: {meta['count']} documents of {collection!r} frozen "
               f"(valid fold: {meta['valid_fold_size']} documents at ratio {meta['ratio']})")


@validation_app.command("list")
def validation_list(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """List the validation sets."""
    from modelstream.training.validation import list_sets

    sets = _with_database(config, lambda plan, db: list_sets(db, plan))
    if as_json:
        _print_json(sets)
        return
    for s in sets:
        typer.echo(f"{s['_id']:<24} {s['collection']:<16} {s['count']:>6} documents  created {s['created']}")


@app.command()
def validate(index: Annotated[str, typer.Argument(help="The index to validate.")],
             set_name: Annotated[str, typer.Option("--set", help="The validation set.")],
             config: ConfigOpt,
             metric: Annotated[Optional[list[str]], typer.Option(
                 "--metric", help="p_at_K or module:function (repeatable; default p_at_1, p_at_10).")] = None,
             query_model: Annotated[Optional[str], typer.Option(help="Default: the index's first query model.")]
             = None,
             as_json: JsonOpt = False) -> None:
    """P@k of finding each validation document by its query field among the set's documents (stored too)."""
    from modelstream.training.validation import validate_index

    log.configure("warning")
    names = metric or ["p_at_1", "p_at_10"]
    result = _with_database(config, lambda plan, db: validate_index(db, plan, index, set_name, names, query_model))
    if as_json:
        _print_json(result)
        return
    for name, value in result["metrics"].items():
        typer.echo(f"{index} on {set_name}: {name} = {value:.4f}")
    typer.echo(f"({result['count']} documents, {result['skipped']} skipped without inputs; query model "
               f"{result['query_model']}, measure {result['measure']})")
    if result["stale_upstream"]:
        typer.echo(f"note: the set froze outputs of older versions of {', '.join(result['stale_upstream'])}")


@app.command()
def train(name: Annotated[str, typer.Argument(help="A training of the registry's `trainings:`.")],
          config: ConfigOpt,
          apply_: Annotated[bool, typer.Option("--apply", help="Write `weights:` into the registry file.")] = False,
          plot: Annotated[bool, typer.Option("--plot", help="Only print the PNG curves of the last run.")] = False,
          progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
          daemon: Annotated[bool, typer.Option(
              "--daemon", help="Ask the running daemon to train (and with --apply, to serve the weights).")] = False,
          socket_: SocketOpt = None,
          ) -> None:
    """Train a registry training's models (use_grads) on the train fold; keep the best weights on disk."""
    from modelstream.training import jobs

    log.configure("warning")
    if daemon:
        _train_in_daemon(name, config, socket_, apply_)
        return
    if plot:
        job = _with_database(config, lambda plan, db: jobs.latest_job(db, plan, name))
        if job is None:
            _fail(f"no finished run of training {name!r}: run `modelstream train {name} -c {config}` first")
        for path in job.get("plots", []):
            typer.echo(path)
        return

    def run(plan, db):
        try:
            jobs.training_spec(plan, name)
        except ModelstreamError as exc:
            _fail(str(exc), 2)
        try:
            return plan, jobs.train(db, plan, name, progress=progress, echo=typer.echo)
        except ConfigErrors as exc:
            _fail(str(exc), 2)

    plan, job = _with_database(config, run)
    metric_names = job["metric_names"]
    for i, metric_name in enumerate(metric_names):
        typer.echo(f"{metric_name}: before {job['before']['values'][i]:.4f}  best {job['best']['values'][i]:.4f} "
                   f"(iteration {job['best']['iteration']})")
    typer.echo(f"trained on {job['train_count']} documents, {job['iterations']} iterations"
               + (" (stopped early)" if job["stopped_early"] else "") + f"; job {job['_id']} in _modelstream.trainings")
    for path in job["plots"]:
        typer.echo(f"plot: {path}")
    if not job["weight_files"]:
        typer.echo("no improvement over the current weights: nothing to change")
        return
    for f in job["weight_files"]:
        typer.echo(f"weights: {f['path']}")
    if apply_:
        try:
            jobs.apply_weights(plan, job["weight_files"])
        except ModelstreamError as exc:
            _fail(f"could not write the weights into {config}: {exc}", 2)
        typer.echo(f"wrote `weights:` into {config}: a running daemon picks it up on reload "
                   "(`modelstream reload` or SIGHUP) and recomputes the outputs")
    else:
        typer.echo(f"to serve them, add to {config} (or rerun with --apply):\n{job['yaml_change']}")


def _train_in_daemon(name: str, config: Path, socket_: Optional[str], apply_: bool) -> None:
    job = _follow_job(config, socket_, lambda c: c.request("train", training=name, apply=apply_)["job"])
    if job["state"] != "done":
        _fail(f"training {name!r} {job['state']}")
    for metric_name, before, best in zip(job["metrics"], job["before"], job["best"]):
        typer.echo(f"{metric_name}: before {before:.4f}  best {best:.4f} (iteration {job['best_iteration']})")
    for path in job["plots"]:
        typer.echo(f"plot: {path}")
    for path in job["weights"]:
        typer.echo(f"weights: {path}")
    if not job["weights"]:
        typer.echo("no improvement over the current weights: nothing to change")
    elif apply_:
        typer.echo(f"the daemon wrote `weights:` into {config} and reloaded: the outputs recompute in the background")


@app.command("migrate-outputs")
def migrate_outputs(
        config: ConfigOpt,
        to: Annotated[str, typer.Option("--to", help="The store to move outputs into: collection or inline.")],
        collection: Annotated[Optional[list[str]], typer.Option(
            "--collection", help="Only this collection (repeatable; default: every collection of the registry).")]
        = None,
        page: Annotated[int, typer.Option(help="Documents per page.")] = 500,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Move existing outputs between `inline` and `collection` (stop the daemon first; resumable)."""
    import pymongo
    from tqdm import tqdm

    from modelstream.daemon.embedded import EmbeddedServer
    from modelstream.daemon.migrate import STORES, migrate_collection, pending

    if to not in STORES:
        _fail(f"--to must be one of {', '.join(STORES)}, not {to!r}", 2)
    reg = _load(config).registry
    names = collection or reg.collections()
    reg.data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(reg.data_dir / "daemon.lock", "a+")  # noqa: SIM115 - held until we exit: no daemon starts meanwhile
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _fail(f"a modelstream daemon is serving {reg.data_dir} (lock {reg.data_dir / 'daemon.lock'}): stop it "
              "first; it would keep writing outputs in the old store while they move", 3)
    embedded = None
    uri = reg.database.uri
    if uri is None:
        embedded = EmbeddedServer(reg.data_dir / "db", reg.database.embedded_port).start()
        uri = embedded.uri
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
    failed = 0
    try:
        db = client[reg.database.name]
        for name in names:
            own = own_database(db, reg)
            with tqdm(total=pending(db, name, to, own), desc=name, unit="doc", disable=not progress) as bar:
                done = migrate_collection(db, name, to, page=page, progress=bar.update, own=own)
            resumed = f" (resumed after _id {done.resumed_from})" if done.resumed_from is not None else ""
            typer.echo(f"{name}: {done.moved} documents' outputs moved to {to}{resumed}"
                       + (f", {done.dropped} orphaned side documents dropped" if done.dropped else ""))
            for failure in done.failed[:5]:
                typer.echo(f"  {failure['_id']}: rejected (code {failure['code']}): {failure['message']}", err=True)
            failed += len(done.failed)
    except pymongo.errors.PyMongoError as exc:
        _fail(f"migration interrupted: {exc} (rerun the same command: it continues where it stopped)")
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()
    stale = [n for n in names if reg.outputs.store_for(n) != to]
    if stale:
        typer.echo(f"now set the store in {config} before starting the daemon, e.g. "
                   f"`outputs: {{collections: {{{', '.join(f'{n}: {to}' for n in stale)}}}}}` "
                   "(otherwise it recomputes every output into the old store)")
    if failed:
        _fail(f"{failed} documents were rejected and kept their outputs where they were", 1)


def main() -> None:  # pragma: no cover - `python -m modelstream`
    with contextlib.suppress(KeyboardInterrupt):
        app()
    sys.exit(0)
