"""Insert the example images with plain pymongo: half as `_content` bytes, half as relative file:// urls.

    .venv/bin/python examples/images/load.py --uri mongodb://...     # safe to run twice
"""

from __future__ import annotations

import argparse

import pymongo
from bson import Binary
from pymongo.errors import BulkWriteError

from make_images import DATA, make


def documents() -> list[dict]:
    docs = []
    for i, path in enumerate(make()):
        if i % 2 == 0:  # the bytes themselves, in the document
            img = {"_content": {"bytes": Binary(path.read_bytes()), "type": "image"}}
        else:  # a url, relative to the registry's folder: the daemon reads the file, the document stays small
            img = {"_content": {"url": f"file://{path.relative_to(DATA.parent).as_posix()}", "type": "image"}}
        docs.append({"_id": path.stem, "name": path.stem, "stored_as": "bytes" if "bytes" in img["_content"] else "url",
                     "img": img})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", default="images")
    parser.add_argument("--collection", default="images")
    args = parser.parse_args()
    docs = documents()
    collection = pymongo.MongoClient(args.uri)[args.db][args.collection]
    try:
        inserted = len(collection.insert_many(docs, ordered=False).inserted_ids)
    except BulkWriteError as exc:  # already there from an earlier run: keep them
        inserted = exc.details.get("nInserted", 0)
    print(f"inserted {inserted} new images ({len(docs)} in the set) into {args.db}.{args.collection}")


if __name__ == "__main__":
    main()
