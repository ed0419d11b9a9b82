"""Typed content: how values travel between documents and models (vectors, `_content` payloads)."""

from modelstream.content.values import decode_input, to_stored, vector_of

__all__ = ["decode_input", "to_stored", "vector_of"]
