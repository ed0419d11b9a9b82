"""Filtered search: pre-filter or post-filter, chosen by how much of the index the filter matches.

- **pre**: the database names every matching `_id` (one scan of the collection), the index searches
  only those. Right for a narrow filter; its cost grows with the collection, not with n.
- **post**: the index over-fetches the k nearest candidates, the database keeps those that match
  (a query over at most MAX_CANDIDATES `_id`s, by the `_id` index). Right for a broad filter; its
  cost grows with n / selectivity, not with the collection.

The selectivity is estimated on a uniform sample of the index's own `_id`s (one small query,
remembered per filter for a while). Post-filtering is chosen when the expected k,
`(n + excluded) * MARGIN / selectivity`, fits in MAX_CANDIDATES. If the candidates fall short (the
filter matches less near this query than on average), k grows from the rate actually seen; when it
would pass MAX_CANDIDATES the search falls back to pre-filtering. Either way a filtered search
returns n results whenever n matching documents are in the index, best first.

The filter is a query over the user's documents (the `collection` output store keeps outputs
elsewhere, but `_id`s are the same), so both strategies query the source collection.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from bson import json_util

from modelstream import log
from modelstream.daemon.documents import id_key
from modelstream.errors import ApiError
from modelstream.indexers import VectorIndex

logger = log.get("modelstream.search")

SAMPLE_SIZE = 64  # index _ids checked against the filter to estimate its selectivity
MARGIN = 2.0  # over-fetch twice what the estimate says is needed, so one round is usually enough
MAX_CANDIDATES = 500  # beyond this many candidates a post-filter costs more than a pre-filter scan
ID_CHUNK = 50  # _ids per $in query: SecantusDB's $in slows superlinearly past ~50; MongoDB does not mind
SELECTIVITY_TTL_S = 30.0  # an estimate is reused this long for the same filter on the same index
SELECTIVITY_CACHE_SIZE = 256


@dataclass
class Filtered:
    hits: list[tuple[Any, float]]  # (_id, score), best first, at most n
    strategy: str  # "pre" or "post": how the hits were found


class FilteredSearch:
    """Shared by all connections: holds the selectivity estimates, nothing else."""

    def __init__(self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic):
        self._rng = rng or random.Random()
        self._clock = clock
        self._estimates: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def search(self, index: VectorIndex, collection, vector: np.ndarray, n: int, query: dict,
               exclude: set) -> Filtered:
        """The n best documents matching `query`, never one of `exclude` (keys from `id_key`)."""
        if "_id" in query:  # a filter on _id is narrow, and the post-filter's own `_id: {$in}` would clash with it
            return self._pre(index, collection, vector, n, query, exclude, reason="filter on _id")
        selectivity = self.selectivity(index, collection, query)
        k = _candidates_needed(n + len(exclude), selectivity)
        if k > MAX_CANDIDATES:
            return self._pre(index, collection, vector, n, query, exclude, reason="narrow", selectivity=selectivity)
        return self._post(index, collection, vector, n, query, exclude, k, selectivity)

    # -- the two strategies ------------------------------------------------------------------------

    def _pre(self, index, collection, vector, n, query, exclude, **why) -> Filtered:
        allowed = [doc_id for doc_id in _database(lambda: [d["_id"] for d in collection.find(query, {"_id": 1})])
                   if id_key(doc_id) not in exclude]
        hits = index.search(vector, n, allowed)
        logger.debug("filtered search", index=index.name, strategy="pre", matching=len(allowed), found=len(hits),
                     **why)
        return Filtered(hits, "pre")

    def _post(self, index, collection, vector, n, query, exclude, k, selectivity) -> Filtered:
        verdicts: dict[Any, bool] = {}  # id_key -> matches the filter; each candidate is asked about once
        rounds = 0
        while True:
            rounds += 1
            size = len(index)
            k = min(k, size)
            candidates = [(d, s) for d, s in index.search(vector, k) if id_key(d) not in exclude]
            unknown = [d for d, _ in candidates if id_key(d) not in verdicts]
            matching = {id_key(d) for d in matching_ids(collection, query, unknown)}
            verdicts.update((id_key(d), id_key(d) in matching) for d in unknown)
            hits = [(d, s) for d, s in candidates if verdicts[id_key(d)]]
            exhausted = k >= size and len(candidates) + len(exclude) >= size  # every live vector was a candidate
            if len(hits) >= n or exhausted:
                logger.debug("filtered search", index=index.name, strategy="post", selectivity=selectivity,
                             candidates=k, rounds=rounds, found=min(len(hits), n))
                return Filtered(hits[:n], "post")
            if k >= MAX_CANDIDATES or len(candidates) + len(exclude) < k:  # no more to over-fetch: ask the database
                return self._pre(index, collection, vector, n, query, exclude, reason="post-filter fell short",
                                 selectivity=selectivity, candidates=k, rounds=rounds)
            seen_rate = max(len(hits), 1) / max(len(candidates), 1)  # the filter near this query, not on average
            k = min(MAX_CANDIDATES, max(2 * k, _candidates_needed(n + len(exclude), seen_rate)))

    # -- selectivity ---------------------------------------------------------------------------------

    def selectivity(self, index: VectorIndex, collection, query: dict) -> float:
        """The share of the index's documents that match `query`, from a sample (remembered for a while)."""
        key = (index.name, json_util.dumps(query, sort_keys=True))
        now = self._clock()
        with self._lock:
            cached = self._estimates.get(key)
            if cached is not None and now - cached[1] < SELECTIVITY_TTL_S:
                self._estimates.move_to_end(key)
                return cached[0]
        sample = index.sample_ids(SAMPLE_SIZE, self._rng)
        fraction = len(matching_ids(collection, query, sample)) / len(sample) if sample else 0.0
        with self._lock:
            self._estimates[key] = (fraction, now)
            self._estimates.move_to_end(key)
            while len(self._estimates) > SELECTIVITY_CACHE_SIZE:
                self._estimates.popitem(last=False)
        return fraction


def matching_ids(collection, query: dict, ids: list) -> list:
    """Those of `ids` whose documents match `query`: by the `_id` index, ID_CHUNK at a time.

    `{**query, "_id": {"$in": ...}}` rather than `{"$and": [query, {"_id": ...}]}`: the same documents,
    but SecantusDB plans only the first by the `_id` index (the second scans the collection).
    """
    found = []
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start:start + ID_CHUNK]
        found += _database(lambda: [d["_id"] for d in collection.find({**query, "_id": {"$in": chunk}}, {"_id": 1})])
    return found


def _candidates_needed(n: int, selectivity: float) -> int:
    """Candidates to over-fetch so that about MARGIN times n of them match; unbounded for a filter that matched none."""
    if selectivity <= 0:
        return math.inf
    return max(n, math.ceil(n * MARGIN / selectivity))


def _database(call: Callable[[], list]) -> list:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the server's complaint about the query goes back verbatim
        raise ApiError("bad_filter", f"the database rejected the filter: {exc}",
                       hint="`filter` is a MongoDB query over the collection's documents, "
                            "e.g. {\"year\": {\"$gte\": 2010}}") from exc
