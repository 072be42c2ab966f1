"""The console's door and plumbing: token, cookie, CSRF, loopback, the live stream, the clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import structlog

from bot.config import Config
from bot.console.sandbox import UserClock
from tests.conftest import SECRET, AppClient, MakeClient, make_config

TOKEN = "console-token-for-tests"


def live_config(tmp_path: Path) -> Config:
    """A config outside sandbox mode (a Meta token is set)."""
    return make_config(tmp_path, WHATSAPP_TOKEN="meta-token", WHATSAPP_PHONE_NUMBER_ID="1066")


@pytest.fixture
async def live(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AppClient:
    """The app outside sandbox mode with ``BOT_CONSOLE_TOKEN`` set."""
    monkeypatch.setenv("BOT_CONSOLE_TOKEN", TOKEN)
    return await make_client(live_config(tmp_path))


async def login(client: AppClient, token: str = TOKEN) -> str:
    """Log in through the form; the session's CSRF token."""
    resp = await client.post(
        "/console/login", data={"token": token, "operator": "Carla"}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    session = await (await client.get("/console/api/session")).json()
    return str(session["csrf"])


class TestToken:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/console/"),
            ("GET", "/console/api/users"),
            ("GET", "/console/api/users/5511999990000"),
            ("GET", "/console/api/events"),
            ("POST", "/console/api/users/5511999990000/pause"),
            ("POST", "/console/api/users/5511999990000/reply"),
        ],
    )
    async def test_without_the_token_everything_is_401(
        self, live: AppClient, method: str, path: str
    ) -> None:
        """No session and no token: the page, the API and the live stream all answer 401."""
        resp = await live.request(method, path)
        assert resp.status == 401
        if path == "/console/":
            assert 'name="token"' in await resp.text()  # the login form

    async def test_wrong_token_is_401(self, live: AppClient) -> None:
        """A wrong token, as a bearer or through the login form, is refused and sets no cookie."""
        bearer = {"Authorization": "Bearer not-the-token"}
        assert (await live.get("/console/api/users", headers=bearer)).status == 401
        resp = await live.post("/console/login", data={"token": TOKEN + "x"}, allow_redirects=False)
        assert resp.status == 401 and "Set-Cookie" not in resp.headers
        assert (await live.get("/console/api/users")).status == 401

    async def test_guessing_is_throttled(self, live: AppClient) -> None:
        """After ten wrong tokens in a minute a client is refused, even with the right one."""
        for _ in range(10):
            resp = await live.post("/console/login", data={"token": "guess"})
            assert resp.status in (401, 429)
        assert resp.status == 429 and "wait a minute" in await resp.text()
        resp = await live.post("/console/login", data={"token": TOKEN}, allow_redirects=False)
        assert resp.status == 429
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await live.get("/console/api/users", headers=bearer)).status == 401

    async def test_login_sets_an_httponly_samesite_cookie(self, live: AppClient) -> None:
        """The right token starts a session held in an HttpOnly, SameSite=Strict cookie."""
        resp = await live.post(
            "/console/login", data={"token": TOKEN, "operator": "Carla"}, allow_redirects=False
        )
        assert resp.status == 303 and resp.headers["Location"] == "/console/"
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        assert TOKEN not in cookie
        session = await (await live.get("/console/api/session")).json()
        assert session["operator"] == "Carla" and session["csrf"] and not session["sandbox"]
        page = await live.get("/console/")
        assert page.status == 200 and "console.js" in await page.text()
        assert page.headers["X-Frame-Options"] == "DENY"  # no clickjacking of operator buttons
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]

    async def test_post_without_csrf_is_refused(self, live: AppClient) -> None:
        """A logged-in browser's change needs the session's X-CSRF-Token header."""
        csrf = await login(live)
        path = "/console/api/users/5511999990000/pause"
        resp = await live.post(path, json={"reason": "x"})
        assert resp.status == 403 and "X-CSRF-Token" in (await resp.json())["error"]
        resp = await live.post(path, json={}, headers={"X-CSRF-Token": csrf + "x"})
        assert resp.status == 403
        resp = await live.post(path, json={}, headers={"X-CSRF-Token": csrf})
        assert resp.status == 404  # through the door: there is no such user yet
        assert "no user 5511999990000" in (await resp.json())["error"]

    async def test_bearer_token_works_without_cookie_or_csrf(self, live: AppClient) -> None:
        """Scripts use ``Authorization: Bearer``: no cookie rides along, so no CSRF is needed."""
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await live.get("/console/api/users", headers=bearer)).status == 200
        resp = await live.post("/console/api/users/5511999990000/pause", json={}, headers=bearer)
        assert resp.status == 404

    async def test_logout_ends_the_session(self, live: AppClient) -> None:
        """After logging out the cookie opens nothing."""
        csrf = await login(live)
        resp = await live.post("/console/logout", headers={"X-CSRF-Token": csrf})
        assert resp.status == 200
        assert (await live.get("/console/api/users")).status == 401

    async def test_no_secret_is_ever_shown(self, live: AppClient) -> None:
        """Nothing the console serves holds the app secret, the Meta token or its own token."""
        await login(live)
        for path in ("/console/", "/console/api/session", "/console/api/users"):
            text = await (await live.get(path)).text()
            assert SECRET not in text and "meta-token" not in text and TOKEN not in text


class TestOff:
    async def test_outside_sandbox_without_token_the_console_is_off(
        self, make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Outside sandbox mode and with no BOT_CONSOLE_TOKEN, /console says how to turn it on."""
        monkeypatch.delenv("BOT_CONSOLE_TOKEN", raising=False)
        client = await make_client(live_config(tmp_path))
        for path in ("/console/", "/console/api/users", "/console/login"):
            resp = await client.get(path)
            assert resp.status == 404 and "BOT_CONSOLE_TOKEN" in await resp.text()


class TestSandboxDoor:
    @pytest.fixture
    async def sandbox(self, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> AppClient:
        monkeypatch.delenv("BOT_CONSOLE_TOKEN", raising=False)
        return await make_client()  # the test config has no Meta token: sandbox mode

    async def test_open_on_loopback(self, sandbox: AppClient) -> None:
        """A loopback client gets the console and a session cookie without logging in."""
        resp = await sandbox.get("/console/api/session")
        assert resp.status == 200 and (await resp.json())["operator"] == "sandbox"
        assert "HttpOnly" in resp.headers["Set-Cookie"]

    async def test_a_foreign_host_name_is_refused(self, sandbox: AppClient) -> None:
        """A page reaching loopback under another name (DNS rebinding) is refused."""
        resp = await sandbox.get("/console/api/session", headers={"Host": "evil.example:8080"})
        assert resp.status == 403 and "loopback" in await resp.text()

    async def test_a_change_without_a_session_is_refused(self, sandbox: AppClient) -> None:
        """A cross-site POST (no session cookie, no CSRF token) changes nothing."""
        resp = await sandbox.post("/console/api/sandbox/5511999990000/clock", json={"hours": 25})
        assert resp.status == 403
        await sandbox.get("/console/api/session")
        resp = await sandbox.post("/console/api/sandbox/5511999990000/clock", json={"hours": 25})
        assert resp.status == 403 and "X-CSRF-Token" in (await resp.json())["error"]

    async def test_without_the_sandbox_cloud_sandbox_routes_say_so(
        self, sandbox: AppClient
    ) -> None:
        """An app built without the sandbox's fake Cloud API answers 404 on sandbox routes."""
        csrf = (await (await sandbox.get("/console/api/session")).json())["csrf"]
        resp = await sandbox.post(
            "/console/api/sandbox/5511999990000/fire", headers={"X-CSRF-Token": csrf}
        )
        assert resp.status == 404 and "sandbox mode" in (await resp.json())["error"]

    async def test_bad_input_is_a_clear_400(self, sandbox: AppClient) -> None:
        """A bad user id, a body that is not JSON or an unknown state is a 400 saying why."""
        client = sandbox
        session = await (await client.get("/console/api/session")).json()
        csrf = {"X-CSRF-Token": session["csrf"]}
        resp = await client.get("/console/api/users/not%20a%20user")
        assert resp.status == 400 and "user id" in (await resp.json())["error"]
        resp = await client.post("/console/api/users/1/pause", data=b"{", headers=csrf)
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]
        resp = await client.post("/console/api/users/1/handback", json={"state": "x"}, headers=csrf)
        assert resp.status == 400 and "state must be one of" in (await resp.json())["error"]


class TestLiveStream:
    async def test_an_action_is_streamed_as_a_change(self, live: AppClient) -> None:
        """The stream opens with an event and sends ``change`` after an operator acts."""
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        resp = await live.get("/console/api/events", headers=bearer)
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"event: change")
        raw, headers = _signed_text()
        assert (await live.post("/webhook", data=raw, headers=headers)).status == 200
        second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 30)
        assert second.startswith(b"event: change") and second != first
        resp.close()


def _signed_text() -> tuple[bytes, dict[str, str]]:
    from bot.testing import signed_request, text_message

    return signed_request(text_message("5511999990000", "hi", name="Ana"), SECRET)


class TestUserClock:
    def test_moving_one_user_leaves_the_others_alone(self) -> None:
        """Advancing one user's clock moves that user only; outside a worker it is wall time."""
        clock = UserClock()
        clock.advance("ana", 25 * 3600)
        assert clock.at("ana") - time.time() == pytest.approx(25 * 3600, abs=5)
        assert clock.at("bia") == pytest.approx(time.time(), abs=5)
        assert clock() == pytest.approx(time.time(), abs=5)

    def test_a_worker_sees_its_users_clock(self) -> None:
        """Inside a worker (``wa_id`` bound to the log context) the clock is that user's."""
        clock = UserClock()
        clock.advance("ana", 3600)
        with structlog.contextvars.bound_contextvars(wa_id="ana"):
            assert clock() == pytest.approx(clock.at("ana"), abs=5)
        with structlog.contextvars.bound_contextvars(wa_id="bia"):
            assert clock() == pytest.approx(time.time(), abs=5)

    def test_stored_times_map_to_the_clock_in_force_then(self) -> None:
        """A wall time from before a move keeps its offset then; reset drops every move."""
        clock = UserClock()
        before = time.time() - 1
        clock.advance("ana", 100.0)
        after = time.time() + 1
        assert clock.user_time("ana", before) == before
        assert clock.user_time("ana", after) == after + 100.0
        clock.reset("ana")
        assert clock.offset("ana") == 0.0 and clock.user_time("ana", after) == after
