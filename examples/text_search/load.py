"""Insert the demo sentences with plain pymongo, as any application would. Safe to run twice."""

from __future__ import annotations

import argparse
from pathlib import Path

import pymongo
from pymongo.errors import BulkWriteError

SENTENCES = Path(__file__).with_name("sentences.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", default="demo")
    parser.add_argument("--collection", default="sentences")
    args = parser.parse_args()
    lines = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = [{"_id": i, "text": text} for i, text in enumerate(lines)]
    collection = pymongo.MongoClient(args.uri)[args.db][args.collection]
    inserted = 0
    for start in range(0, len(docs), 1000):
        try:
            inserted += len(collection.insert_many(docs[start:start + 1000], ordered=False).inserted_ids)
        except BulkWriteError as exc:  # already there from an earlier run: keep them
            inserted += exc.details.get("nInserted", 0)
    print(f"inserted {inserted} new sentences ({len(docs)} in the corpus) into {args.db}.{args.collection}")


if __name__ == "__main__":
    main()
