"""The tutorial's three training tasks on rendered scenes, end to end, offline, through the daemon.

    .venv/bin/python examples/scenes/demo.py [--documents 1200]

1. Renders scenes (scenes.py) and inserts them with plain pymongo; builds the captioning vocabulary
   from the train fold's captions (vocab.txt).
2. Starts `modelstream serve` on a copy of registry.yaml in examples/scenes/.run/ (embedded database
   unless $MODELSTREAM_MONGODB_URI is set) and waits until every image has its features, projection,
   tags and caption.
3. Freezes a validation set (`--relevant-by scene`: any image with the query's attributes is a right
   answer), then measures before training: P@k by `modelstream validate`, and text queries through the
   socket over the held-out images only.
4. Trains text_to_image, noun_tags and captions (`modelstream train NAME --apply`), sends SIGHUP: the
   daemon reloads the registry, recomputes what the new weights change and switches the index when ready.
5. Measures again, prints a few searches, generated captions and tags of held-out images, and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymongo

from modelstream.api.client import Client
from modelstream.models.captioning import build_vocabulary, write_vocabulary
from modelstream.training import folds

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scenes import documents  # noqa: E402 - after the path is set

METRICS = ("--metric", "p_at_1", "--metric", "p_at_5")
QUERIES = ("a small red circle on the left", "a large blue square at the top", "a yellow star in the middle, large",
           "there is a small green triangle near the bottom")


def say(message: str) -> None:
    print(message, flush=True)


def modelstream(run: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "modelstream", *args, "-c", str(run / "registry.yaml")],
                            capture_output=True, text=True, cwd=run)
    if result.returncode != 0:
        sys.exit(f"modelstream {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def connect(serve: subprocess.Popen, run: Path, timeout_s: float = 300) -> Client:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            sys.exit(f"modelstream serve exited with code {serve.returncode}; see {run / 'serve.log'}")
        try:
            client = Client(str(run / ".modelstream" / "api.sock"), timeout_s=120).connect()
            client.ping()
            return client
        except OSError:
            time.sleep(0.5)
    sys.exit("modelstream serve did not answer in time")


def wait_idle(client: Client, label: str, after_job: int | None = None, timeout_s: float = 1800) -> None:
    """Until the scan is over, the stream idle, and (with `after_job`) a job newer than it started and all
    such jobs done (a reload's recompute)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        status = client.status()
        jobs = [j for j in status["jobs"] if after_job is not None and j["id"] > after_job]
        scan = status["scan"]
        line = f"  {label}: {status['phase']}, scanned {scan['done']}/{scan['total']}"
        if line != last:
            say(line)
            last = line
        if status["phase"] == "streaming" and status["lag_events"] == 0 and scan["done"] >= scan["total"] \
                and (after_job is None or (jobs and all(j["state"] == "done" for j in jobs))):
            return
        time.sleep(1.0)
    sys.exit(f"the daemon did not finish {label} in time")


def held_out_search(client: Client, queries: list[dict], held_out: list) -> dict[str, float]:
    """Each query is a held-out image's caption; search only the held-out images; right = same attributes.
    (Most scenes occur once among the held-out images: one right answer per query, as in P@k.)"""
    at_1 = at_5 = 0.0
    for query in queries:
        hits = client.search("scenes", like={"caption": query["caption"]}, n=5,
                             filter={"_id": {"$in": held_out}}, project=["scene"])
        scenes = [h["document"]["scene"] for h in hits]
        at_1 += scenes[:1] == [query["scene"]]
        at_5 += query["scene"] in scenes
    return {"right_at_1": at_1 / len(queries), "right_in_5": at_5 / len(queries)}


def figure(text: str, metric: str) -> float:
    return float(next(line.split("=")[1] for line in text.splitlines() if f"{metric} =" in line))


def trained(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1200)
    parser.add_argument("--run-dir", type=Path, default=HERE / ".run",
                        help="made anew: the registry copy, vocabulary, daemon data, curves, results.json")
    args = parser.parse_args()
    run = args.run_dir.resolve()

    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    for name in ("registry.yaml", "scenes.py"):  # scenes.py: the user metric the registry names
        shutil.copy(HERE / name, run / name)
    embedded = None
    if not os.environ.get("MODELSTREAM_MONGODB_URI"):
        from modelstream.daemon.embedded import EmbeddedServer

        embedded = EmbeddedServer(run / "db").start()
        os.environ["MODELSTREAM_MONGODB_URI"] = embedded.uri
    serve = None
    try:
        client = pymongo.MongoClient(os.environ["MODELSTREAM_MONGODB_URI"])
        db = client[os.environ.get("MODELSTREAM_DB", "scenes")]
        db.scenes.drop()
        docs = documents(args.documents)
        db.scenes.insert_many(docs)
        train_captions = [d["caption"] for d in docs if folds.fold_of(d["_id"], 0.2) == folds.TRAIN]
        write_vocabulary(run / "vocab.txt", build_vocabulary(train_captions))
        say(f"{len(docs)} rendered scenes inserted with pymongo; vocabulary of "
            f"{len((run / 'vocab.txt').read_text().split())} words from {len(train_captions)} train-fold captions")

        log = open(run / "serve.log", "w")
        serve = subprocess.Popen([sys.executable, "-m", "modelstream", "serve", "-c", str(run / "registry.yaml")],
                                 cwd=run, stdout=log, stderr=subprocess.STDOUT)
        api = connect(serve, run)
        started = time.monotonic()
        wait_idle(api, "features, projections, tags and captions")
        say(f"  all {len(docs)} images processed in {time.monotonic() - started:.0f} s\n")

        say(modelstream(run, "validation", "create", "scenes_valid", "--collection", "scenes", "--sample", "200",
                        "--split", "img:caption", "--relevant-by", "scene").strip())
        frozen = list(db["_modelstream.validation.scenes_valid"].find({}, {"_id": 1, "fields": 1}))
        held_out = [r["_id"] for r in frozen]
        queries = [{"caption": r["fields"]["caption"], "scene": r["fields"]["scene"]} for r in frozen]

        before = {"validate": modelstream(run, "validate", "scenes", "--set", "scenes_valid", *METRICS),
                  "search": held_out_search(api, queries, held_out)}
        say("\nbefore training:\n" + before["validate"].strip())
        last_job = max((j["id"] for j in api.status()["jobs"]), default=0)

        for name in ("text_to_image", "noun_tags", "captions"):
            say(f"\ntraining {name} ...")
            say(trained(modelstream(run, "train", name, "--apply", "--no-progress")))

        say("\nSIGHUP: the daemon reloads the registry with the new weights")
        serve.send_signal(signal.SIGHUP)
        wait_idle(api, "recomputing with the trained weights", after_job=last_job)
        after = {"validate": modelstream(run, "validate", "scenes", "--set", "scenes_valid", *METRICS),
                 "search": held_out_search(api, queries, held_out)}
        say("\nafter training:\n" + after["validate"].strip())

        say("\ntext queries over all images (top 3 scenes):")
        for text in QUERIES:
            hits = api.search("scenes", like={"caption": text}, n=3, project=["scene"])
            say(f"  {text!r}: " + "; ".join(f"{h['document']['scene']} ({h['score']:.2f})" for h in hits))

        say("\nheld-out images: generated caption and predicted tags, against the truth")
        for record in db.scenes.find({"_id": {"$in": held_out[:6]}}):
            outputs = record["_outputs"]
            say(f"  {record['scene']:<28} caption: {outputs['img']['captioner']!r}  (true: {record['caption']!r})")
            say(f"  {'':<28} tags: {outputs['img']['tagger']}  (nouns: {outputs['caption']['nouns']})")

        jobs = {j["training"]: j for j in db["_modelstream.trainings"].find({"status": "done"})}
        table = [
            ("text_to_image", f"P@1 (validate, {len(held_out)} held-out)", figure(before["validate"], "p_at_1"),
             figure(after["validate"], "p_at_1")),
            ("text_to_image", "P@5 (validate)", figure(before["validate"], "p_at_5"), figure(after["validate"], "p_at_5")),
            ("text_to_image", "socket search: right scene first", before["search"]["right_at_1"],
             after["search"]["right_at_1"]),
            ("text_to_image", "socket search: a right scene in the top 5", before["search"]["right_in_5"],
             after["search"]["right_in_5"]),
        ]
        for name, label in (("noun_tags", "tags vs caption nouns"), ("captions", "generated vs true caption")):
            for i, metric in enumerate(("Jaccard", "attributes named")):
                table.append((name, f"{metric} ({label})", jobs[name]["before"]["values"][i],
                              jobs[name]["best"]["values"][i]))
        say("\n| training | metric | before | after |\n|---|---|---|---|")
        for row in table:
            say(f"| {row[0]} | {row[1]} | {row[2]:.3f} | {row[3]:.3f} |")
        (run / "results.json").write_text(json.dumps(
            {"table": table, "plots": {n: j["plots"] for n, j in jobs.items()}}, indent=2))
        say(f"\ncurves: {run / '.modelstream' / 'trainings'}/*/*.png")
        api.close()
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(120)
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
