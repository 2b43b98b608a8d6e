"""The one exception type for a user's mistake (a config field, a file, a folder).

The ``fedshield`` command prints a :class:`UserError` as one line, ``error: <message>``, and exits
with status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it). Messages therefore start
with what is wrong, named as the user wrote it: ``"<dotted.field>: <what is wrong and what is
allowed>; got <value>"``, or a file or folder instead of a field.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for, reported as ``error: <message>`` (exit status 2)."""
