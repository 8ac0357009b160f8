"""One error type for the whole platform, rendered as RFC 9457 ``application/problem+json``.

    ProblemError                 any refusal a client should see (status, type, detail)
      ├── ValidationProblem      422, with per-field ``errors``
      ├── NotFound               404
      ├── Conflict               409
      ├── Unauthorized           401 (adds ``WWW-Authenticate``)
      ├── Forbidden              403
      └── RateLimited            429 (adds ``Retry-After``)

Handlers and services raise these; ``shared.web.problem_middleware`` renders them. Anything else
is a bug: it is logged with the request id and answered with a bare 500.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_BASE = "https://vetgate.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemError(Exception):
    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"
    content_type: str = PROBLEM_CONTENT_TYPE

    def __init__(
        self,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if slug is not None:
            self.slug = slug
        if title is not None:
            self.title = title
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class FieldError(dict[str, str]):
    """One entry of a validation problem's ``errors``: where (``field``) and what (``message``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field=field, message=message)


class ValidationProblem(ProblemError):
    status = 422
    slug = "validation-error"
    title = "Request is not valid"

    def __init__(self, errors: Sequence[FieldError], detail: str | None = None) -> None:
        fields = ", ".join(e["field"] for e in errors) or "body"
        super().__init__(detail or f"Invalid value for: {fields}", extra={"errors": list(errors)})
        self.errors = list(errors)


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ProblemError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Unauthorized(ProblemError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str, *, error: str = "invalid_token", **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault(
            "WWW-Authenticate", f'Bearer error="{error}", error_description="{detail}"'
        )


class Forbidden(ProblemError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class RateLimited(ProblemError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(
            detail, headers={"Retry-After": str(seconds)}, extra={"retry_after": seconds}
        )


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class OAuthError(ProblemError):
    """An RFC 6749 §5.2 error: ``error`` and ``error_description`` plus the problem members.

    OAuth clients read ``error``; the body stays ``application/json`` as RFC 6749 requires.
    """

    content_type = "application/json"
    title = "OAuth error"

    def __init__(self, error: str, description: str, *, status: int = 400, **kwargs: Any) -> None:
        super().__init__(description, slug=f"oauth/{error}", status=status, **kwargs)
        self.error = error
        self.headers.setdefault("Cache-Control", "no-store")
        self.extra.update(error=error, error_description=description)


class ServiceUnavailable(ProblemError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"
