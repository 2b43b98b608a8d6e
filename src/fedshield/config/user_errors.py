"""One line for a user's mistake, whatever layer noticed it (fedshield, Hydra or OmegaConf).

The ``fedshield`` command prints ``error: <line>`` and exits with status 2 for these; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from fedshield.errors import UserError

_HYDRA_USER_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)

# A domain check's message that starts with its field: "<dotted.field>[ (aside)] <verb> ...".
_FIELD_THEN_VERB = re.compile(r"^([a-z_][\w.]*)( \([^)]*\))? (must|names|needs) ")
# The CLI's shape: "<dotted.field>: <what is wrong>".
_FIELD_COLON = re.compile(r"^([a-z_][\w.]*): ")


def describe_user_error(error: BaseException) -> str | None:
    """``"<field>: <what is wrong>"`` when ``error`` is a user's mistake, else None."""
    if isinstance(error, UserError):
        return field_first(_one_line(str(error)))
    if isinstance(error, MissingConfigException):
        return _missing_option(str(error))
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)) and getattr(error, "full_key", None):
        return f"{error.full_key}: no such setting (`fedshield --cfg job` prints them all)"
    if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
        message = getattr(error, "msg", None) or str(error)
        return f"{error.full_key}: {_one_line(message)}"
    if isinstance(error, InstantiationException):
        return _instantiation(error)
    if isinstance(error, _HYDRA_USER_ERRORS):
        cause = error.__cause__
        described = describe_user_error(cause) if cause is not None else None
        return described or _one_line(str(error))
    return None


def _instantiation(error: InstantiationException) -> str | None:
    """A config group whose target refused its arguments (a ValueError or TypeError it raised)."""
    cause = error.__cause__
    if not isinstance(cause, (ValueError, TypeError)):
        return None
    if isinstance(cause, UserError):
        return describe_user_error(cause)
    key = re.search(r"full_key:\s*(\S+)", str(error))
    target = re.search(r"target '([\w.]+)'", str(error))
    what = f"{target.group(1).rsplit('.', 1)[-1]}: " if target else ""
    message = field_first(_one_line(str(cause)))
    field = key.group(1) if key else "config"
    if message.startswith(f"{field}."):  # the target named its own field
        return message
    return f"{field}: {what}{message}"


def field_first(message: str) -> str:
    """``"num_rounds must be >= 1"`` -> ``"num_rounds: must be >= 1"`` (the CLI's shape)."""
    return _FIELD_THEN_VERB.sub(r"\1:\2 \3 ", message)


def named_field(message: str) -> str | None:
    """The dotted field a message names first (``"ensemble.alpha must be ..."`` or
    ``"ensemble.alpha: ..."``), else None."""
    shaped = _FIELD_COLON.match(field_first(message))
    return shaped[1] if shaped else None


def _missing_option(text: str) -> str:
    """Hydra's "Could not find 'dataset/nope'" with its options on one line, without search paths."""
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing is None:
        return _one_line(text.split("Config search path")[0])
    group, name = missing.groups()
    options = re.search(rf"Available options in '{re.escape(group)}':\s*\n((?:\s+\S+\n?)+)", text)
    allowed = ", ".join(options.group(1).split()) if options else "see `fedshield --help`"
    return f"{group}: no config named {name!r}; choose one of {allowed}"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type=")))
