"""Who may use the console: the token, the session cookie, CSRF, loopback-only sandbox.

* Outside sandbox mode the console is off unless ``BOT_CONSOLE_TOKEN`` is set; then every
  request, the live stream included, needs a session (a login with the token sets an
  HttpOnly, SameSite=Strict cookie) or ``Authorization: Bearer <token>``. The token is
  compared in constant time.
* In sandbox mode without a token the console is open, to loopback clients addressing it by
  a loopback name only (a page elsewhere cannot reach it, even by DNS rebinding).
* Every state-changing request of a browser session carries the session's CSRF token in
  ``X-CSRF-Token``; a request without it is refused with 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

COOKIE = "windowbot_console"
CSRF_HEADER = "X-CSRF-Token"
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_PUBLIC = frozenset({"/login", "/static/console.css"})
_SESSION_SECONDS = 12 * 3600
_MAX_SESSIONS = 1000
_MAX_FAILURES = 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: who, its CSRF token, and when it ends."""

    operator: str
    csrf: str
    until: float


OPERATOR = web.RequestKey("operator", str)
SESSION = web.RequestKey("session", Session)


class Access:
    """The console's door.

    Args:
        token: ``BOT_CONSOLE_TOKEN`` ('' when unset).
        sandbox: whether the bot runs in sandbox mode.
    """

    def __init__(self, token: str, *, sandbox: bool) -> None:
        self._token = token.encode()
        self.open = sandbox and not token
        self.enabled = bool(token) or sandbox
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}  # client -> times of wrong tokens

    def token_ok(self, given: str, remote: str = "") -> bool:
        """Whether ``given`` is the console token (constant time).

        A client that gave a wrong token ``_MAX_FAILURES`` times within a minute is refused
        (even the right token) until that minute has passed: guessing is slow.
        """
        now = time.monotonic()
        failures = [t for t in self._failures.get(remote, []) if now - t < 60.0]
        if len(failures) >= _MAX_FAILURES:
            self._failures[remote] = failures
            return False
        if self._token and hmac.compare_digest(self._token, given.encode()):
            return True
        if len(self._failures) > _MAX_SESSIONS:
            self._failures.clear()
        self._failures[remote] = [*failures, now]
        return False

    def throttled(self, remote: str) -> bool:
        """Whether ``remote`` gave too many wrong tokens in the last minute."""
        now = time.monotonic()
        return sum(now - t < 60.0 for t in self._failures.get(remote, [])) >= _MAX_FAILURES

    def login(self, operator: str) -> tuple[str, Session]:
        """A new session for ``operator``: the cookie value and the session."""
        now = time.time()
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.until > now}
        key = secrets.token_urlsafe(32)
        name = operator.strip()[:64] or "operator"
        session = Session(name, secrets.token_urlsafe(32), now + _SESSION_SECONDS)
        self._sessions[key] = session
        return key, session

    def logout(self, key: str) -> None:
        """End the session behind cookie value ``key``."""
        self._sessions.pop(key, None)

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        key = request.cookies.get(COOKIE, "")
        session = self._sessions.get(key)
        if session is None or session.until < time.time():
            self._sessions.pop(key, None)
            return None
        return session

    @staticmethod
    def set_cookie(request: web.Request, response: web.StreamResponse, key: str) -> None:
        """Hand the browser its session cookie (never readable by scripts)."""
        response.set_cookie(
            COOKIE,
            key,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/console",
            max_age=_SESSION_SECONDS,
        )

    def middleware(self, login_page: Callable[[str, int], web.Response]) -> Middleware:
        """The console sub-application's middleware: everything the module docstring says."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not self.enabled:
                return web.Response(
                    status=404,
                    text="the console is off outside sandbox mode: "
                    "set BOT_CONSOLE_TOKEN to turn it on",
                )
            if self.open and not _loopback(request):
                return web.Response(
                    status=403,
                    text="the sandbox console answers loopback clients only "
                    "(http://127.0.0.1:PORT/console or http://localhost:PORT/console)",
                )
            relative = request.path.removeprefix("/console")
            if relative in _PUBLIC:
                return await handler(request)
            changing = request.method not in ("GET", "HEAD", "OPTIONS")
            bearer = request.headers.get("Authorization", "")
            if bearer.startswith("Bearer ") and self.token_ok(bearer[7:], request.remote or ""):
                request[OPERATOR] = "api"  # no cookie, so no cross-site request can carry it
                return await handler(request)
            session = self.session(request)
            fresh = ""
            if session is None:
                if not self.open:
                    if relative.startswith("/api"):
                        return _refuse(401, "log in first (POST /console/login with the token)")
                    return login_page("", 401)
                if changing:
                    return _refuse(403, "no console session: load /console first")
                fresh, session = self.login("sandbox")
            if changing and not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, "").encode(), session.csrf.encode()
            ):
                return _refuse(403, f"missing or wrong {CSRF_HEADER} header")
            request[SESSION] = session
            request[OPERATOR] = session.operator
            response = await handler(request)
            if fresh and not response.prepared:  # a live stream has sent its headers
                self.set_cookie(request, response, fresh)
            return response

        return guard


def _refuse(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


def _loopback(request: web.Request) -> bool:
    """Whether the client is on this machine and calls the bot by a loopback name."""
    try:
        remote = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return False
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return remote.is_loopback and host.lower() in _LOOPBACK_NAMES
