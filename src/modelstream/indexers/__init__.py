"""Vector indexes derived from the collection: FAISS underneath, document `_id`s on top."""

from modelstream.indexers.vector_index import VectorIndex

__all__ = ["VectorIndex"]
