"""Vector indexes derived from the collection: FAISS underneath, document `_id`s on top."""

from modelstream.indexers.snapshot import load_snapshot, save_snapshot
from modelstream.indexers.vector_index import IndexParams, VectorIndex


def index_for(spec) -> VectorIndex:
    """A new, empty index for a registry IndexSpec."""
    return VectorIndex(spec.name, spec.measure, spec.type, IndexParams(**spec.params))


__all__ = ["IndexParams", "VectorIndex", "index_for", "load_snapshot", "save_snapshot"]
