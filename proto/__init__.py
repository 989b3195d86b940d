"""The wire contract: `.proto` sources under `proto/mcphub/v1/` and the Python code generated from them.

Regenerate with `python scripts/gen_proto.py`; the test suite fails when the checked-in code is stale.
"""

from __future__ import annotations

from . import metadata
from .mcphub.v1 import toolhub_pb2, toolhub_pb2_grpc

__all__ = ["metadata", "toolhub_pb2", "toolhub_pb2_grpc"]
