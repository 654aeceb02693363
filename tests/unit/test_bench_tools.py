"""The arithmetic of ``make bench`` that its reported figures rest on (the README quotes them)."""

from __future__ import annotations

import pytest

from bench.loadgen import _quantile
from bench.run import _unconfirmed_acceptances


@pytest.mark.parametrize(
    ("count", "q", "expected"),
    [
        (100, 0.99, 99),  # q x n whole: the 99th of 100, not the 100th
        (100, 0.50, 50),
        (472, 0.99, 468),  # ceil(467.28) = 468
        (1, 0.99, 1),
        (10, 0.0, 1),  # the smallest, not the largest
    ],
)
def test_the_load_generators_percentiles_are_nearest_rank(count: int, q: float, expected: int) -> None:
    assert _quantile([float(v) for v in range(1, count + 1)], q) == expected


def test_a_request_the_agent_took_but_the_sender_saw_fail_cancels_no_loss() -> None:
    """Spans the sender was told were accepted and the agent never counted are lost; the agent counting more (an
    answer that came too late) is not a negative loss."""
    assert _unconfirmed_acceptances(client_accepted=1000, agent_accepted=990) == 10
    assert _unconfirmed_acceptances(client_accepted=1000, agent_accepted=1512) == 0
