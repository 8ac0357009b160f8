"""Field types reused by every service's schemas."""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer, StringConstraints

_EMAIL_RE = re.compile(
    r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def _email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL_RE.match(value):
        raise ValueError("not a valid e-mail address")
    local, _, domain = value.partition("@")
    return f"{local}@{domain.lower()}"


def _time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone name") from None
    return value


Email = Annotated[str, AfterValidator(_email)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


def _isoformat(moment: datetime) -> str:
    return moment.isoformat()


#: A datetime rendered with its own offset (``+00:00``, never ``Z``): clinic-local times read
#: the same in a London winter as in a London summer.
OffsetDatetime = Annotated[datetime, PlainSerializer(_isoformat, return_type=str, when_used="json")]
