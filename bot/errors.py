"""The one exception tree of windowbot.

Every error the framework raises derives from :class:`BotError`; where a builtin fits, the
subclass inherits it too, so ``except ValueError`` keeps working for callers who expect it.
Messages say what went wrong *and* what to do next.
"""

from __future__ import annotations


class BotError(Exception):
    """Root of every windowbot error."""


class ConfigError(BotError, ValueError):
    """A configuration value is missing or invalid; the message names the key and the file."""


class WebhookError(BotError, ValueError):
    """An inbound webhook could not be accepted (bad signature, body or shape)."""


class SignatureError(WebhookError):
    """The ``X-Hub-Signature-256`` header is missing or does not match the body."""


class PayloadError(WebhookError):
    """The body is not JSON, or not a WhatsApp Business Account envelope."""


class StoreError(BotError, RuntimeError):
    """The store could not be reached or refused an operation."""


class StoreUnavailable(StoreError, ConnectionError):
    """The store is down; the caller should answer 503 so that Meta retries."""


class VersionConflict(StoreError):
    """An optimistic, version-checked write lost a race; reload and try again."""


class LeaseLost(StoreError):
    """Another process took over the user this worker thought it owned."""


class FlowError(BotError, ValueError):
    """A flow file is invalid; ``findings`` lists every problem with file and line."""

    def __init__(self, message: str, findings: list[object] | None = None) -> None:
        super().__init__(message)
        self.findings = findings or []


class TemplateError(BotError, ValueError):
    """A template is unknown, not approved, or its parameters do not fit it."""


class ScheduleError(BotError, ValueError):
    """A reminder that cannot be scheduled as asked: a bad time, a recurring request, an
    unknown time zone, a template it could never send."""


class RenderError(BotError, ValueError):
    """A Jinja expression in a reply or a template parameter could not be rendered."""


# --- Cloud API errors, mapped by Meta's error code (see ``bot.whatsapp``) -------------------


class CloudAPIError(BotError):
    """The WhatsApp Cloud API refused a request.

    Attributes:
        code: Meta's numeric error code (``error.code``), 0 when none was given.
        http_status: the HTTP status of the response (0 for a transport failure).
        details: ``error.error_data.details`` when present.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: int = 0,
        http_status: int = 0,
        details: str = "",
        fbtrace_id: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.details = details
        self.fbtrace_id = fbtrace_id


class TransientError(CloudAPIError):
    """HTTP 5xx, a timeout or a dropped connection: retry with backoff."""

    retryable = True


class OutcomeUnknown(TransientError):
    """The request may have reached Meta but no answer came (timeout, dropped connection).

    The message may have been accepted: the sender waits for a status webhook carrying the
    entry's callback data before it sends again.
    """


class RateLimited(CloudAPIError):
    """130429 (throughput) or 131056 (pair rate limit): back off and retry."""

    retryable = True


class WindowClosed(CloudAPIError):
    """131047: more than 24 hours since the user last wrote; send the template fallback."""


class TemplateRejected(CloudAPIError):
    """132000/132001/132005/132012/132015/132016: the template call is wrong; never retried."""


class InvalidRequest(CloudAPIError):
    """100 and other 4xx parameter errors: the request is wrong; never retried."""


class Undeliverable(CloudAPIError):
    """131026: the recipient cannot receive messages; the user is marked."""


class SendingHalted(CloudAPIError):
    """190 (token invalid or expired) or 131048 (spam limit): stop sending, keep the queue."""
