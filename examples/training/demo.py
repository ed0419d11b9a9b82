"""Train a projection and a tagger on the synthetic task; print the metrics before and after.

    .venv/bin/python examples/training/demo.py

Uses $MODELSTREAM_MONGODB_URI when set (a replica set), otherwise starts the embedded server for the
run. Works on a copy of registry.yaml in examples/training/.run/ (so `--apply` edits the copy), and
drives everything through the `modelstream` command, as a user would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pymongo

HERE = Path(__file__).resolve().parent
RUN = HERE / ".run"
sys.path.insert(0, str(HERE))

from synthetic import documents  # noqa: E402


def modelstream(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(RUN)}
    result = subprocess.run([sys.executable, "-m", "modelstream", *args, "-c", str(RUN / "registry.yaml")],
                            capture_output=True, text=True, env=env, cwd=RUN)
    if result.returncode != 0:
        sys.exit(f"modelstream {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def main() -> None:
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir()
    for name in ("registry.yaml", "synthetic.py"):
        shutil.copy(HERE / name, RUN / name)
    embedded = None
    if not os.environ.get("MODELSTREAM_MONGODB_URI"):
        from modelstream.daemon.embedded import EmbeddedServer

        embedded = EmbeddedServer(RUN / "db").start()
        os.environ["MODELSTREAM_MONGODB_URI"] = embedded.uri
    try:
        client = pymongo.MongoClient(os.environ["MODELSTREAM_MONGODB_URI"])
        db_name = os.environ.get("MODELSTREAM_DB", "training_demo")
        client.drop_database(db_name)
        client[db_name].pairs.insert_many(documents(n=2000, dim=32, noise=0.3, seed=0))
        client.close()
        print("2000 synthetic documents: x, q = R x + noise (R a fixed random rotation), tags from x\n")

        print(modelstream("validation", "create", "pairs_valid", "--collection", "pairs", "--sample", "200"))
        metrics = ("--metric", "p_at_1", "--metric", "p_at_10")
        before = modelstream("validate", "pairs", "--set", "pairs_valid", *metrics)
        print("before training:\n" + before)
        print(modelstream("train", "align", "--apply", "--no-progress"))
        after = modelstream("validate", "pairs", "--set", "pairs_valid", *metrics)
        print("after training (the registry now names the new weights):\n" + after)
        print(modelstream("train", "tags", "--apply", "--no-progress"))
        print("the registry's models now read:")
        print("\n".join(line for line in (RUN / "registry.yaml").read_text().splitlines()
                        if re.search(r"^\s+(projection|tagger):", line)))
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
