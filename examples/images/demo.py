"""Image-by-image search over the socket: the daemon embeds every image with EfficientNet-Lite0.

    .venv/bin/python examples/images/demo.py

Starts `modelstream serve` (embedded database) on registry.yaml, loads the example images with
plain pymongo (half as bytes, half as file:// urls), waits until all are indexed, then searches
`like` a stored `_id` and `like` a raw image sent as Extended JSON binary `_content`.
Needs the `image` extra: pip install -e ".[image]".
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

from bson import Binary, json_util

from modelstream.api.client import Client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_images import COLOURS, make, shape  # noqa: E402 - after the path is set

CONFIG = HERE / "registry.yaml"
SOCKET = HERE / ".modelstream" / "api.sock"


def wait_for_daemon(serve: subprocess.Popen, timeout_s: float = 180) -> Client:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            sys.exit(f"modelstream serve exited with code {serve.returncode}")
        try:
            client = Client(str(SOCKET), timeout_s=60).connect()
            client.ping()
            return client
        except OSError:
            time.sleep(0.5)
    sys.exit("modelstream serve did not answer in time")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def show(title: str, results: list[dict]) -> None:
    print(title)
    for rank, hit in enumerate(results, 1):
        print(f"  {rank}. {hit['score']:.3f}  {hit['_id']}")


def main() -> None:
    total = len(make())
    modelstream = [sys.executable, "-m", "modelstream"]
    print("starting modelstream serve (embedded database, EfficientNet-Lite0)...", flush=True)
    serve = subprocess.Popen(modelstream + ["serve", "-c", str(CONFIG), "--console-logs", "--log-level", "warning"])
    try:
        client = wait_for_daemon(serve)
        uri = client.status()["database"]["uri"]
        subprocess.run([sys.executable, str(HERE / "load.py"), "--uri", uri], check=True)
        while (size := client.status()["indexes"]["images"]["size"]) < total:
            print(f"\rindexed {size}/{total}", end="", flush=True)
            time.sleep(0.5)
        print(f"\rindexed {total}/{total}")

        for name in ("red_circle", "blue_square", "flower", "china"):
            try:
                show(f"like _id {name!r}:", client.search("images", like={"_id": name}, n=3))
            except Exception as exc:  # noqa: BLE001 - e.g. the photos need scikit-learn
                print(f"like _id {name!r}: {exc}")

        query = shape("circle", COLOURS["red"], offset=12, background=(235, 235, 235))  # not in the collection
        like = {"img": {"_content": {"bytes": Binary(png(query)), "type": "image"}}}
        line = json_util.dumps({"id": 1, "op": "search", "index": "images", "like": like, "n": 3})
        print(f"raw image query, as sent over the socket: {line[:110]}...{line[-40:]}")
        show("like a new, shifted red circle on grey:", client.search("images", like=like, n=3))
        client.close()
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
        print(f"modelstream serve stopped (exit {code})")


if __name__ == "__main__":
    main()
