"""The one rule for names that travel between a device and the fleet.

Model names, fleet and device names end up as segments of object-store keys and URLs, so
the agent (at LoadModel and CaptureData), its config and the fleet service check them with
this same rule: an agent that accepted a name the fleet refuses would queue data that can
never be delivered.
"""

from __future__ import annotations

import re

from edgekiln.errors import UserError

# Letters and digits with inner dashes: safe in an S3 key, a URL path and a file name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:-*[A-Za-z0-9])*")
# DNS-label length, well under the fleet's limit on an object-key segment.
MAX_NAME_LENGTH = 63


def is_valid_name(value: object) -> bool:
    """True when ``value`` is a string the fleet accepts as a name segment."""
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH and NAME_PATTERN.fullmatch(value) is not None


def check_name(value: object, what: str) -> str:
    """``value`` when it is a valid name, else a UserError that says the rule."""
    if not is_valid_name(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:80] + "…")
        raise UserError(
            f"{what} {shown} is not a valid name", hint=f"use 1-{MAX_NAME_LENGTH} letters, digits and inner dashes"
        )
    return value  # type: ignore[return-value]
