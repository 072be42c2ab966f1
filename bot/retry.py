"""The one retry policy: exponential backoff with jitter, then give up.

The outbox is the only durable retry queue: a send is one short request, and what failed
is tried again from the outbox after :meth:`RetryPolicy.delay`. Handling a message (a flow
turn whose hook raised) is retried under the same kind of policy before the message is
marked failed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how far apart, a failed attempt is made again.

    Attributes:
        max_attempts: attempts in all, the first included; then the work is marked failed.
        base: seconds before the second attempt (before jitter).
        cap: the longest wait between two attempts.
    """

    max_attempts: int = 6
    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempts: int, jitter: float) -> float | None:
        """Seconds to wait after ``attempts`` failed ones, or ``None`` to give up.

        ``jitter`` is a random number in [0, 1): the wait is spread over 0.5x-1.5x so that
        many users failing at once do not retry at once.
        """
        if attempts >= self.max_attempts:
            return None
        return min(self.cap, self.base * 2.0 ** max(0, attempts - 1)) * (0.5 + jitter)


__all__ = ["RetryPolicy"]
