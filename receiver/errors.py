"""One exception hierarchy for the whole service.

Adapters (ledger, destinations, providers, fetcher) translate driver errors (httpx, boto3,
sqlite3, psycopg) into these at their boundary, so callers never import a driver to catch.
Each HTTP-facing error knows its status and a stable machine-readable ``code``.
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(ReceiverError):
    """A bad or missing configuration key; stops the process with one line."""

    code = "config"


# --- input from clients and providers -------------------------------------------------------


class BadRequest(ReceiverError):
    status = 400
    code = "bad_request"


class ValidationFailed(ReceiverError):
    """A request parameter outside the documented limits; names the field."""

    status = 422
    code = "validation_failed"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Unauthorized(ReceiverError):
    status = 401
    code = "unauthorized"


class Forbidden(ReceiverError):
    """Authenticated, but not allowed: a read-only console key, a missing CSRF token."""

    status = 403
    code = "forbidden"


class SignatureError(Unauthorized):
    """A callback failed verification; ``cause`` feeds the verification-failure metric."""

    code = "bad_signature"

    def __init__(self, message: str, *, cause: str = "signature") -> None:
        super().__init__(message)
        self.cause = cause


class NotFound(ReceiverError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ReceiverError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(ReceiverError):
    """A client that sends its body too slowly (server.body_read_timeout_seconds)."""

    status = 408
    code = "request_timeout"


class Conflict(ReceiverError):
    status = 409
    code = "conflict"


# --- infrastructure --------------------------------------------------------------------------


class LedgerUnavailable(ReceiverError):
    """The ledger cannot commit; hooks answer 503 so the provider retries."""

    status = 503
    code = "ledger_unavailable"


class LedgerRefused(ReceiverError):
    """The ledger refused the data itself (a value it cannot store), not an outage: never a
    503, which would have the sender retry the same bad data for days."""

    status = 422
    code = "unrecordable"


class ProviderError(ReceiverError):
    """The provider refused or failed a request."""

    status = 502
    code = "provider_error"

    def __init__(
        self, message: str, *, retry_after: float | None = None, maybe_sent: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # False only when the request certainly never reached the provider (refused
        # connection) or was rejected before work began (429): then a resubmit cannot bill twice.
        self.maybe_sent = maybe_sent


class FetchError(ReceiverError):
    """A transient download failure: retried until the URL's deadline."""

    status = 502
    code = "fetch_failed"


class FetchRefused(FetchError):
    """A download that must not be retried: blocked address, not an image, over the cap."""

    code = "fetch_refused"


class FetchExpired(FetchError):
    """The origin says the URL is gone (403/404/410) or its deadline passed."""

    code = "expired"


class StoreError(ReceiverError):
    """A destination could not store an object (transient unless ``permanent``)."""

    status = 502
    code = "store_failed"

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class AlreadyExists(StoreError):
    """A create-only write found the key present: a complete earlier write wins."""

    code = "already_exists"
