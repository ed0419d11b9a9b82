"""Typed content: how values travel between documents and models (vectors, `_content` payloads).

  values   model outputs -> BSON (float32 binary vectors) and stored vectors -> numpy
  types    `_content` types: image, ndarray, float_tensor, json, and a registry's own
  fetch    `_content.url`: file:// in place, http(s) through a thread pool into a disk cache
  reader   one registry's types + fetcher: document value -> model input
"""

from modelstream.content.reader import ContentReader, reader_for, url_of
from modelstream.content.types import ContentError, Types, encode, url
from modelstream.content.values import decode_input, to_stored, vector_of

__all__ = ["ContentError", "ContentReader", "Types", "decode_input", "encode", "reader_for", "to_stored", "url",
           "url_of", "vector_of"]
