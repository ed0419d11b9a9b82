"""The long fault run: 20,000 writes from separate writer processes, 20 kill -9 of the daemon, per store.

    .venv/bin/python bench/fault_long.py [--store inline|collection|both] [--ops 20000] [--kills 20]

Starts its own SecantusDB, runs tests/fault_harness.py's `Run`, and prints one JSON line of
counts per store: what was written, how often the daemon died, and what is wrong at the end
(missing/stale outputs, orphaned outputs and vectors, stale vectors: every vector is checked).
Exits 1 if any count of wrong things is not zero.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault_harness import DbServer, Run, is_clean, printable  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["inline", "collection", "both"], default="both")
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--pace-s", type=float, default=60.0, help="spread the writes over about this long")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    stores = ["inline", "collection"] if args.store == "both" else [args.store]
    ok = True
    with tempfile.TemporaryDirectory(prefix="fault_long_") as tmp:
        server = DbServer(Path(tmp) / "db").start()
        try:
            for i, store in enumerate(stores):
                started = time.monotonic()
                run = Run(Path(tmp) / store, server.uri, "long_" + uuid.uuid4().hex[:8], store=store,
                          writers=args.writers, ops=args.ops, pace_s=args.pace_s, max_s=args.pace_s * 10,
                          kills=args.kills, up_s=(0.3, 3.0), seed=args.seed + i, vector_sample=None)
                try:
                    report = run.execute()
                finally:
                    run.close()
                report["wall_s"] = round(time.monotonic() - started, 1)
                print(printable(report), flush=True)
                ok = ok and is_clean(report) and report["kills"] >= args.kills
        finally:
            server.stop()
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
