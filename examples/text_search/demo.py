"""`make demo`: the daemon, a plain pymongo loader, a progress bar, a few searches, then a clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from modelstream.api.client import Client

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "demo.yaml"
SOCKET = ROOT / ".modelstream" / "demo" / "api.sock"


def wait_for_daemon(serve: subprocess.Popen, timeout_s: float = 180) -> Client:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            sys.exit(f"modelstream serve exited with code {serve.returncode}")
        try:
            client = Client(str(SOCKET)).connect()
            client.ping()
            return client
        except OSError:
            time.sleep(0.5)
    sys.exit("modelstream serve did not answer in time")


def main() -> None:
    modelstream = [sys.executable, "-m", "modelstream"]
    print("starting modelstream serve (embedded database, MiniLM model)...", flush=True)
    serve = subprocess.Popen(modelstream + ["serve", "-c", str(CONFIG), "--console-logs", "--log-level", "warning"])
    try:
        client = wait_for_daemon(serve)
        uri = client.status()["database"]["uri"]
        subprocess.run([sys.executable, str(HERE / "load.py"), "--uri", uri], check=True)
        total = sum(1 for line in (HERE / "sentences.txt").read_text().splitlines() if line.strip())
        with tqdm(total=total, desc="indexed", unit="doc") as bar:
            while True:
                size = client.status()["indexes"]["sentences"]["size"]
                bar.update(size - bar.n)
                if size >= total:
                    break
                time.sleep(0.25)
        client.close()
        for query in (HERE / "queries.txt").read_text().splitlines():
            if query.strip():
                subprocess.run(modelstream + ["query", "-c", str(CONFIG), query.strip(), "-n", "3"], check=True)
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
        print(f"modelstream serve stopped (exit {code})")


if __name__ == "__main__":
    main()
