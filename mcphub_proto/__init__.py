"""The wire contract in Python: the code generated from the `.proto` sources in `proto/mcphub/v1/`,
and the metadata keys that are part of the contract without being in the schema.

Regenerate with `python scripts/gen_proto.py`; the test suite fails when the checked-in code is stale.
Not named `proto`: that top-level name belongs to proto-plus, which every google-cloud client
library installs, and two distributions shipping `proto/__init__.py` overwrite each other.
"""

from __future__ import annotations

from . import metadata
from .v1 import toolhub_pb2, toolhub_pb2_grpc

__all__ = ["metadata", "toolhub_pb2", "toolhub_pb2_grpc"]
