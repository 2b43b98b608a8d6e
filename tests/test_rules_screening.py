"""Tests of the malicious-reply policy: screen_updates and aggregate_screened against every rule."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from fedshield.rules import (
    RFA,
    AggregationError,
    AggregationRule,
    Bulyan,
    FedAvg,
    FLTrust,
    FoolsGold,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
    aggregate_screened,
    screen_updates,
)

NUM_PARAMS = 4
ALL_RULES = {
    "fedavg": FedAvg,
    "krum": lambda: Krum(num_malicious=1),
    "multi_krum": lambda: MultiKrum(num_malicious=1, num_selected=3),
    "trimmed_mean": lambda: TrimmedMean(num_trimmed=1),
    "median": Median,
    "bulyan": lambda: Bulyan(num_malicious=1),
    "rfa": RFA,
    "fltrust": FLTrust,
    "foolsgold": FoolsGold,
}


def _honest(num_clients: int = 7) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return list(1.0 + 0.1 * torch.randn(num_clients, NUM_PARAMS, generator=generator))


# (reply, expected words in the reason) for each kind of bad reply.
BAD_REPLIES: dict[str, tuple[object, str]] = {
    "nan": (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "NaN or inf"),
    "inf": (np.array([1.0, 1.0, np.inf, 1.0], dtype=np.float32), "NaN or inf"),
    "wrong_shape": (torch.ones(NUM_PARAMS + 1), "shape"),
    "matrix": (torch.ones(2, NUM_PARAMS // 2), "shape"),
    "int64": (torch.ones(NUM_PARAMS, dtype=torch.int64), "non-floating dtype"),
    "not_a_tensor": ({"weights": [1.0] * NUM_PARAMS}, "not a tensor or array"),
    "list": ([1.0] * NUM_PARAMS, "not a tensor or array"),
    # ||1e30 * ones(4)|| = 2e30: float32 squares would overflow to inf; float64 gives 2e30.
    "huge_norm": (np.full(NUM_PARAMS, 1e30, dtype=np.float32), "L2 norm 2e+30 > max_norm"),
}


def test_every_kind_of_bad_reply_is_dropped_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: 7 honest replies (ids 0..6), then one of each bad kind (ids 100, 101, ...).
    honest = _honest()
    bad_ids = list(range(100, 100 + len(BAD_REPLIES)))
    replies = honest + [reply for reply, _ in BAD_REPLIES.values()]
    client_ids = list(range(7)) + bad_ids

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedshield.rules.screening"):
        result = screen_updates(replies, client_ids, num_params=NUM_PARAMS, dtype=torch.float32, max_norm=100.0)

    # Assert
    assert result.client_ids == tuple(range(7))
    assert torch.equal(result.updates, torch.stack(honest))
    assert [identifier for identifier, _ in result.rejected] == bad_ids
    for (identifier, reason), (_, words) in zip(result.rejected, BAD_REPLIES.values(), strict=True):
        assert words in reason
        assert f"client {identifier}: {reason}" in caplog.text
    assert all(record.levelno == logging.WARNING for record in caplog.records)


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("bad", BAD_REPLIES)
def test_rule_runs_on_what_screening_keeps(name: str, bad: str) -> None:
    # Prepare: 7 honest replies around ones and one bad reply in the middle (id 3).
    honest = _honest()
    replies: list[object] = honest[:3] + [BAD_REPLIES[bad][0]] + honest[3:]
    client_ids = [0, 1, 2, 3, 4, 5, 6, 7]
    rule = ALL_RULES[name]()
    server_update = torch.ones(NUM_PARAMS) if rule.requires_server_update else None

    # Execute
    screened = screen_updates(replies, client_ids, num_params=NUM_PARAMS, dtype=torch.float32, max_norm=100.0)
    aggregate, reason = aggregate_screened(
        rule,
        screened,
        weights_by_id={identifier: 10.0 for identifier in client_ids},
        server_update=server_update,
    )

    # Assert
    assert [identifier for identifier, _ in screened.rejected] == [3]
    assert BAD_REPLIES[bad][1] in screened.rejected[0][1]
    assert reason is None
    assert aggregate is not None and aggregate.shape == (NUM_PARAMS,)
    assert aggregate.dtype == torch.float32
    assert bool(torch.isfinite(aggregate).all())
    if name != "foolsgold":  # FoolsGold may zero out look-alike clients; the rest stay near 1
        assert (aggregate - 1).abs().max() < 0.5


def test_value_finite_in_float64_but_not_in_the_working_dtype_is_dropped() -> None:
    # Prepare: 1e300 fits float64 but overflows float32; with no norm bound only the
    # conversion can catch it.
    replies = [np.full(NUM_PARAMS, 1e300), np.ones(NUM_PARAMS)]

    # Execute
    result = screen_updates(replies, [1, 2], num_params=NUM_PARAMS, dtype=torch.float32, max_norm=float("inf"))

    # Assert
    assert result.rejected == ((1, "update overflows torch.float32"),)
    assert result.client_ids == (2,)


def test_screening_converts_kept_updates_without_touching_the_originals() -> None:
    # Prepare
    as_tensor = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    as_array = np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float16)

    # Execute
    result = screen_updates([as_tensor, as_array], [5, 6], num_params=NUM_PARAMS, dtype=torch.float32, max_norm=10.0)
    result.updates.add_(1.0)

    # Assert
    assert result.updates.dtype == torch.float32
    assert torch.equal(as_tensor, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert np.array_equal(as_array, np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float16))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.client_ids = ()  # type: ignore[misc]


def test_everything_rejected_leaves_an_empty_matrix_and_the_model_kept() -> None:
    # Prepare
    replies = [torch.full((NUM_PARAMS,), float("nan")), "garbage"]

    # Execute
    screened = screen_updates(replies, [1, 2], num_params=NUM_PARAMS, dtype=torch.float32, max_norm=1.0)
    aggregate, reason = aggregate_screened(Median(), screened, weights_by_id={})

    # Assert
    assert screened.updates.shape == (0, NUM_PARAMS)
    assert aggregate is None
    assert "0 replies left after screening (2 rejected)" in reason
    assert "num_clients" in reason


def test_too_few_replies_for_the_rule_keep_the_model() -> None:
    # Prepare: Krum with f = 2 needs 7; two of seven replies are dropped.
    replies: list[object] = _honest(5) + [torch.ones(3), None]
    client_ids = list(range(7))

    # Execute
    screened = screen_updates(replies, client_ids, num_params=NUM_PARAMS, dtype=torch.float32, max_norm=100.0)
    aggregate, reason = aggregate_screened(
        Krum(num_malicious=2), screened, weights_by_id=dict.fromkeys(client_ids, 1.0)
    )

    # Assert
    assert aggregate is None
    assert reason == (
        "5 replies left after screening (2 rejected): krum needs num_clients >= "
        "2 * num_malicious + 3 = 7 (num_malicious=2); got num_clients=5"
    )


class _NonFiniteRule(AggregationRule):
    """A rule whose aggregate overflows, to exercise the non-finite branch."""

    name = "non_finite"

    def aggregate(
        self,
        updates: torch.Tensor,
        *,
        weights: torch.Tensor,
        client_ids: Sequence[int],
        server_update: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return updates.sum(dim=0) * float("inf")


def test_non_finite_aggregate_keeps_the_model() -> None:
    # Prepare
    screened = screen_updates(_honest(3), [1, 2, 3], num_params=NUM_PARAMS, dtype=torch.float32, max_norm=100.0)

    # Execute
    aggregate, reason = aggregate_screened(_NonFiniteRule(), screened, weights_by_id={1: 1.0, 2: 1.0, 3: 1.0})

    # Assert
    assert aggregate is None
    assert reason == "non_finite returned a non-finite aggregate"


def test_weights_follow_the_client_ids() -> None:
    # Prepare: FedAvg with weights 1 (id 8) and 3 (id 9): (1 * 0 + 3 * 4) / 4 = 3.
    screened = screen_updates(
        [torch.zeros(NUM_PARAMS), torch.full((NUM_PARAMS,), 4.0)],
        [8, 9],
        num_params=NUM_PARAMS,
        dtype=torch.float64,
        max_norm=100.0,
    )

    # Execute
    aggregate, reason = aggregate_screened(FedAvg(), screened, weights_by_id={9: 3.0, 8: 1.0})

    # Assert
    assert reason is None
    torch.testing.assert_close(aggregate, torch.full((NUM_PARAMS,), 3.0, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: screen_updates([torch.ones(4)] * 2, [1, 1], num_params=4, dtype=torch.float32, max_norm=1.0),
            AggregationError,
            "unique",
        ),
        (
            lambda: screen_updates([torch.ones(4)] * 2, [1], num_params=4, dtype=torch.float32, max_norm=1.0),
            AggregationError,
            "client_ids must have 2 entries",
        ),
        (
            lambda: screen_updates([], [], num_params=4, dtype=torch.float32, max_norm=0.0),
            ValueError,
            "max_norm",
        ),
        (
            lambda: screen_updates([], [], num_params=4, dtype=torch.int32, max_norm=1.0),
            ValueError,
            "dtype",
        ),
        (
            lambda: screen_updates([], [], num_params=0, dtype=torch.float32, max_norm=1.0),
            ValueError,
            "num_params",
        ),
        (
            lambda: aggregate_screened(
                FedAvg(),
                screen_updates([torch.ones(4)], [1], num_params=4, dtype=torch.float32, max_norm=9.0),
                weights_by_id={2: 1.0},
            ),
            AggregationError,
            r"no weight for client ids \[1\]",
        ),
    ],
    ids=["duplicate_ids", "length", "max_norm", "dtype", "num_params", "missing_weight"],
)
def test_driver_bugs_raise(call, error: type[Exception], message: str) -> None:
    # Execute / Assert
    with pytest.raises(error, match=message):
        call()


def test_updates_in_the_working_dtype_near_the_norm_bound_get_the_full_check() -> None:
    # Prepare: float32 updates (the one-pass path's input) whose max-entry bound sqrt(n) max|x|
    # exceeds max_norm while the L2 norm does not (kept), one just above it (dropped), and a
    # non-finite one; norms ||(3, 4, 0, 0)|| = 5 and ||(3, 4.0001, 0, 0)|| > 5.
    kept = torch.tensor([3.0, 4.0, 0.0, 0.0])
    above = torch.tensor([3.0, 4.0001, 0.0, 0.0])
    infinite = torch.tensor([0.0, float("-inf"), 0.0, 0.0])

    # Execute
    result = screen_updates(
        [kept, above, infinite], [1, 2, 3], num_params=NUM_PARAMS, dtype=torch.float32, max_norm=5.0
    )

    # Assert
    assert result.client_ids == (1,)
    assert torch.equal(result.updates, kept.unsqueeze(0))
    assert [client for client, _ in result.rejected] == [2, 3]
    assert "L2 norm 5.00008 > max_norm=5" in result.rejected[0][1]
    assert "NaN or inf" in result.rejected[1][1]
