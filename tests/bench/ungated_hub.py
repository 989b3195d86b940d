"""`mcphub serve` with the audit trail and the policy gate taken out, for the benchmark only.

    python -m tests.bench.ungated_hub serve --json ...   (the same arguments as `mcphub serve`)

The product has no setting that turns the gate or the audit log off, by design. To state
what they cost end to end (the goal: at most 100 us per allowed call), the benchmark runs
this build beside the real hub, on the same config, and compares the two rows.
"""

from __future__ import annotations

import sys

from mcp_local.pipeline import Stage
from mcp_remote import cli, hub

REMOVED = ("audit", "gate")


class UngatedHub(hub.Hub):
    def stages(self) -> list[Stage]:
        return [stage for stage in super().stages() if stage.name not in REMOVED]


def main() -> int:
    hub.Hub = UngatedHub  # type: ignore[misc]  # `mcphub serve` looks the class up when it starts
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
