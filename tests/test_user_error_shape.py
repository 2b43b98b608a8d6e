"""One place knows the shape of a user error's message: "<dotted.field>: <what is wrong>"."""

import pytest

from fedshield.config.user_errors import field_first, named_field


@pytest.mark.parametrize(
    ("message", "shaped", "field"),
    [
        ("ensemble.alpha must be in (0, 1); got 2", "ensemble.alpha: must be in (0, 1); got 2", "ensemble.alpha"),
        (
            "ensemble.clip_norm (rho) must be > 0; got 0",
            "ensemble.clip_norm: (rho) must be > 0; got 0",
            "ensemble.clip_norm",
        ),
        ("ensemble.grouping: must be 'balanced' or 'hash'; got 'x'", None, "ensemble.grouping"),
        ("Error in call to target 'X': boom", None, None),
    ],
)
def test_field_first_messages_name_their_field(message, shaped, field):
    assert field_first(message) == (shaped or message)
    assert named_field(message) == field
