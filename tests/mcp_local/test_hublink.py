"""The hub link's reconnect backoff: full jitter between half the step and the step, capped."""

from __future__ import annotations

from mcp_local.hublink import Backoff


def test_backoff_delays_grow_stay_in_their_window_and_vary() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (40, 30.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        low = min(0.5, ceiling) / 2
        assert all(low <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 150  # jittered, so a fleet of sidecars does not redial in step
        # Spread over the window, not bunched at one end.
        assert min(delays) < low + (ceiling - low) * 0.2 and max(delays) > ceiling - (ceiling - low) * 0.2


def test_a_backoff_with_a_minimum_share_never_drops_below_it() -> None:
    # After losing its sandbox to another sidecar, a redial must never come almost at once.
    backoff = Backoff(first_s=1.0, max_s=60.0, min_share=0.5)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (4, 16.0), (9, 60.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
