"""Field types reused by every service's schemas."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, PlainSerializer, StringConstraints

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


def rfc3339(moment: datetime) -> str:
    """ISO 8601 with the moment's own offset, or in UTC when that offset is not whole minutes
    (local mean time before a zone had standard time: London before 1847 is -00:01:15), which
    RFC 3339 cannot write."""
    offset = moment.utcoffset()
    if offset is not None and offset % timedelta(minutes=1):
        moment = moment.astimezone(UTC)
    return moment.isoformat()


#: The instants a service may store and compute with: PostgreSQL and Python both end at the years
#: 1 and 9999, and a year either side is kept free for local times and day arithmetic.
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def storable(moment: datetime) -> datetime:
    """``moment`` (naive means UTC) if it lies between the years 2 and 9998."""
    try:
        utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError("must lie between the years 2 and 9998")
    return moment


#: A datetime within the storable range; without an offset it is taken as UTC.
Instant = Annotated[datetime, AfterValidator(storable)]
#: A datetime with an offset, within the storable range.
AwareInstant = Annotated[AwareDatetime, AfterValidator(storable)]

#: A datetime rendered with its own offset (``+00:00``, never ``Z``): clinic-local times read
#: the same in a London winter as in a London summer.
OffsetDatetime = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
