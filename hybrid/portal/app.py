"""The portal's web application: the article's sign-in, set-up, Security and administration pages.

``Portal`` holds the process's state (store, sessions, flows, relying party, attempt limits) and
builds a Starlette application whose handlers render Jinja2 templates. Pages, in the article's
words (the visible names are the accessible names tests and scripts use):

* ``/signin`` "Username" → "Continue"; a user with a passkey goes to ``/signin/passkey`` ("Log in
  with passkey", or "Use your password instead"), anyone else (including unknown names, so the
  step reveals nothing more than the article's flow requires) to ``/signin/password``
  ("Password" → "Continue"), then the second factor ``/signin/code`` ("Code"), enrolled at first
  sign-in on ``/signin/enrol`` (an ``otpauth://`` QR code and the secret as text);
* ``/setup``: "Create a passkey" or "I'll do this later" (not shown again for seven days or ten
  sign-ins, whichever comes first);
* ``/flows/<id>``: the hybrid QR code with its live status (Server-Sent Events), or "Use this
  device instead" for the browser's own ``navigator.credentials``;
* ``/settings/security``: the user's passkeys (name, type, created, last used, "Remove");
* ``/admin/users`` → a user → Security tab, "Remove passkeys" enabled only for administrators and
  super users; ``/admin/audit``: every passkey added or removed.

Every POST carries the session's CSRF token (a form field or the ``X-CSRF-Token`` header); a
missing or wrong token, an idle session, or a flow id of another session is "Session Expired".
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import qrcode
import trio
from fido2.webauthn import AuthenticatorAttachment, PublicKeyCredentialCreationOptions
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hybrid.catalogue import Failure, Operation, PasskeyError, catalogue_entry
from hybrid.portal.config import PortalConfig
from hybrid.portal.flows import Flow, FlowRegistry
from hybrid.portal.phone_flow import PhoneCeremony, PhoneStatus
from hybrid.portal.relying_party import (
    MAX_PASSKEYS,
    Ceremony,
    PasskeyKind,
    PortalRelyingParty,
)
from hybrid.portal.security import (
    AttemptLimiter,
    match_totp,
    new_totp_secret,
    totp_uri,
    verify_password,
)
from hybrid.portal.sessions import COOKIE_NAME, Session, SessionStore, Stage
from hybrid.portal.store import (
    ADMIN_VIEW_ROLES,
    PASSKEY_REMOVAL_ROLES,
    ROLES,
    StorageError,
    Store,
    User,
    UserExistsError,
)

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
PROMPT_SNOOZE_SECONDS = 7 * 24 * 3600.0  # "not prompted again for seven (7) days ..."
PROMPT_SNOOZE_SIGNINS = 10  # "... or the next 10 sign-in attempts, whichever occurs first"
WRONG_PASSWORD = "The username or password is incorrect."
WRONG_CODE = "That code is not correct or has expired. Enter the current code from your app."
TOO_MANY = "Too many attempts. Wait a few minutes, then try again."
# Failures a browser's navigator.credentials can end in, for the page script's messages.
BROWSER_FAILURES = (
    Failure.USER_DECLINED,
    Failure.TIMEOUT,
    Failure.EXCLUDED,
    Failure.NOT_SUPPORTED,
    Failure.PROTOCOL_ERROR,
    Failure.SESSION_EXPIRED,
)


class Expired(Exception):
    """The request belongs to a session that timed out, or was modified: "Session Expired"."""

    def __init__(self, why: str) -> None:
        super().__init__(why)


class Forbidden(Exception):
    """Signed in, but this role may not do that."""


class Redirect(Exception):
    """Answer with a redirect to ``target`` (a signed-in user on a sign-in step, say)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


Handler = Callable[[Request, Session], Awaitable[Response]]


def qr_data_uri(text: str, box_size: int = 6) -> str:
    """A black-on-white PNG QR code of ``text`` as a ``data:`` URI for an ``<img>``."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=4,
                         box_size=box_size)  # fmt: skip
    code.add_data(text)
    code.make(fit=True)
    buffer = io.BytesIO()
    code.make_image().save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "Never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


class Portal:
    """One portal process: its storage, sessions, background flows and web application."""

    def __init__(self, config: PortalConfig, store: Store, origin: str) -> None:
        self.config = config
        self.store = store
        self.origin = origin
        self.clock = config.clock
        self.sessions = SessionStore(self.clock, config.idle_timeout)
        self.flows = FlowRegistry(self.clock)
        self.limiter = AttemptLimiter(self.clock)
        self.rp = PortalRelyingParty(store, config.effective_rp_id, origin, self.clock, config.name)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals.update(product=config.name, when=_when)
        self.app = self._build_app()

    # ---- plumbing -----------------------------------------------------------------------------

    async def db(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call in a worker thread."""
        return await trio.to_thread.run_sync(lambda: function(*args, **kwargs))

    def render(
        self, request: Request, session: Session | None, name: str, status: int = 200,
        **context: Any,
    ) -> HTMLResponse:  # fmt: skip
        user = getattr(request.state, "user", None)
        for key in ("notice", "expired", "back", "why"):
            context.setdefault(key, None)
        body = self.templates.get_template(name).render(
            session=session,
            csrf=session.csrf if session else "",
            current_user=user,
            can_admin=bool(user and user.role in ADMIN_VIEW_ROLES),
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def error_page(
        self, request: Request, session: Session | None, error: PasskeyError, status: int = 400,
        **links: Any,
    ) -> HTMLResponse:  # fmt: skip
        logger.info("showing %s (%s)", error.title, error.detail)
        return self.render(
            request, session, "error.html", status, error=error,
            signin=error.operation is Operation.SIGN_IN, **links,
        )  # fmt: skip

    def _expired_page(self, request: Request, why: str) -> HTMLResponse:
        error = PasskeyError(Failure.SESSION_EXPIRED, Operation.SIGN_IN, why)
        response = self.error_page(request, None, error, 401, expired=True)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    def _set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE_NAME, session.id, httponly=True, samesite="strict", secure=self.config.tls,
            path="/",
        )  # fmt: skip

    @staticmethod
    def _address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    async def _csrf_ok(self, request: Request, session: Session) -> bool:
        import secrets

        token = request.headers.get("x-csrf-token")
        if token is None:
            form = await request.form()
            value = form.get("csrf")
            token = value if isinstance(value, str) else None
        return token is not None and secrets.compare_digest(token, session.csrf)

    def page(self, handler: Handler, *, need: str = "any", fresh_ok: bool = False) -> Callable:
        """Wrap ``handler`` with session lookup, idle expiry, CSRF and access checks.

        ``need``: "any" (a visitor), "signed_in" or "admin". ``fresh_ok``: a stale cookie simply
        starts a new session (the sign-in page itself) instead of "Session Expired".
        """

        async def endpoint(request: Request) -> Response:
            cookie = request.cookies.get(COOKIE_NAME)
            session, stale = self.sessions.lookup(cookie)
            created = False
            if session is None:
                if request.method == "POST" or (stale and not fresh_ok):
                    return self._expired_page(request, "the session timed out or is unknown")
                if need != "any":
                    return RedirectResponse("/signin", 303)
                session = self.sessions.new()
                created = True
            request.state.rotated = False
            request.state.user = None
            if session.stage is Stage.SIGNED_IN and session.user_id is not None:
                request.state.user = await self.db(self.store.get_user_by_id, session.user_id)
                if request.state.user is None:  # the account was deleted meanwhile
                    self.sessions.drop(session)
                    return self._expired_page(request, "the account no longer exists")
            if request.method == "POST" and not await self._csrf_ok(request, session):
                return self._expired_page(request, "the form's CSRF token is missing or wrong")
            if need in ("signed_in", "admin") and request.state.user is None:
                return RedirectResponse("/signin", 303)
            if need == "admin" and request.state.user.role not in ADMIN_VIEW_ROLES:
                return self.render(request, session, "forbidden.html", 403)
            try:
                response = await handler(request, session)
            except Expired as exc:
                self.sessions.drop(session)
                return self._expired_page(request, str(exc))
            except Forbidden as exc:
                return self.render(request, session, "forbidden.html", 403, why=str(exc))
            except Redirect as exc:
                response = RedirectResponse(exc.target, 303)
            except Exception:
                # The article's catch-all for unknown edge cases is "Session Expired".
                logger.exception("%s %s failed", request.method, request.url.path)
                self.sessions.drop(session)
                return self._expired_page(request, "internal error")
            current = getattr(request.state, "session", session)
            if created or request.state.rotated or current is not session:
                self._set_cookie(response, current)
            return response

        return endpoint

    def _rotate(self, request: Request, session: Session) -> Session:
        """A new session id (and CSRF token) at sign-in, so a planted cookie is worthless."""
        self.sessions.rotate(session)
        request.state.rotated = True
        return session

    def _build_app(self) -> _SecurityHeaders:
        p = self.page
        routes = [
            Route("/", p(self.index, fresh_ok=True)),
            Route("/signin", p(self.signin_page, fresh_ok=True)),
            Route("/signin", p(self.signin_submit, fresh_ok=True), methods=["POST"]),
            Route("/signin/passkey", p(self.passkey_page)),
            Route("/signin/passkey", p(self.passkey_start), methods=["POST"]),
            Route("/signin/password", p(self.password_page)),
            Route("/signin/password", p(self.password_submit), methods=["POST"]),
            Route("/signin/enrol", p(self.enrol_page)),
            Route("/signin/enrol", p(self.enrol_submit), methods=["POST"]),
            Route("/signin/code", p(self.code_page)),
            Route("/signin/code", p(self.code_submit), methods=["POST"]),
            Route("/signout", p(self.signout), methods=["POST"]),
            Route("/setup", p(self.setup_page, need="signed_in")),
            Route("/setup/later", p(self.setup_later, need="signed_in"), methods=["POST"]),
            Route("/passkeys/new", p(self.passkey_new, need="signed_in"), methods=["POST"]),
            Route("/flows/{flow_id}", p(self.flow_page)),
            Route("/flows/{flow_id}/events", p(self.flow_events)),
            Route("/flows/{flow_id}/cancel", p(self.flow_cancel), methods=["POST"]),
            Route("/flows/{flow_id}/finish", p(self.flow_finish)),
            Route("/webauthn/{op}/begin", p(self.webauthn_begin), methods=["POST"]),
            Route("/webauthn/{op}/complete", p(self.webauthn_complete), methods=["POST"]),
            Route("/home", p(self.home, need="signed_in")),
            Route("/settings", p(self.settings_profile, need="signed_in")),
            Route("/settings/security", p(self.settings_security, need="signed_in")),
            Route(
                "/settings/security/remove",
                p(self.settings_remove, need="signed_in"),
                methods=["POST"],
            ),
            Route("/admin/users", p(self.admin_users, need="admin")),
            Route("/admin/users", p(self.admin_add_user, need="admin"), methods=["POST"]),
            Route("/admin/users/{name}", p(self.admin_user, need="admin")),
            Route("/admin/users/{name}/security", p(self.admin_user_security, need="admin")),
            Route(
                "/admin/users/{name}/security/remove",
                p(self.admin_remove, need="admin"),
                methods=["POST"],
            ),
            Route("/admin/audit", p(self.admin_audit, need="admin")),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        app = Starlette(routes=routes)
        return _SecurityHeaders(app, self.config.public_host, self.origin)

    # ---- sign-in ------------------------------------------------------------------------------

    async def index(self, request: Request, session: Session) -> Response:
        target = "/home" if session.stage is Stage.SIGNED_IN else "/signin"
        return RedirectResponse(target, 303)

    async def signin_page(self, request: Request, session: Session) -> Response:
        if session.stage is Stage.SIGNED_IN:
            return RedirectResponse("/home", 303)
        notice, session.notice = session.notice, None
        return self.render(request, session, "signin.html", notice=notice)

    async def signin_submit(self, request: Request, session: Session) -> Response:
        if session.stage is Stage.SIGNED_IN:
            return RedirectResponse("/home", 303)
        form = await request.form()
        name = str(form.get("username", "")).strip()
        if not name:
            return self.render(request, session, "signin.html", 400,
                               notice="Enter your username.")  # fmt: skip
        user = await self.db(self.store.get_user, name)
        # The same lookups happen for unknown names, so timing tells nothing either.
        passkeys = await self.db(self.store.passkeys_for, user.id if user else -1)
        session.stage = Stage.USERNAME
        session.username = name
        session.pending_user_id = None
        if user is not None and passkeys:
            return RedirectResponse("/signin/passkey", 303)
        return RedirectResponse("/signin/password", 303)

    def _need_stage(self, session: Session, *stages: Stage) -> None:
        if session.stage is Stage.SIGNED_IN and Stage.SIGNED_IN not in stages:
            raise Redirect("/home")
        if session.stage not in stages or session.username is None:
            raise Expired("this step of the sign-in flow is not the current one")

    async def passkey_page(self, request: Request, session: Session) -> Response:
        self._need_stage(session, Stage.USERNAME)
        return self.render(request, session, "passkey.html", username=session.username)

    async def passkey_start(self, request: Request, session: Session) -> Response:
        """ "Log in with passkey": start the phone ceremony and show its QR code."""
        self._need_stage(session, Stage.USERNAME)
        user = await self.db(self.store.get_user, session.username)
        op = Operation.SIGN_IN
        if user is None:
            return self.error_page(request, session, PasskeyError(Failure.NO_CREDENTIAL, op))
        try:
            ceremony = await self.db(self.rp.begin_authentication, user)
        except PasskeyError as exc:
            return self.error_page(request, session, exc)
        return await self._start_phone_flow(request, session, user, ceremony)

    async def password_page(self, request: Request, session: Session) -> Response:
        self._need_stage(session, Stage.USERNAME)
        return self.render(request, session, "password.html", username=session.username)

    async def password_submit(self, request: Request, session: Session) -> Response:
        self._need_stage(session, Stage.USERNAME)
        assert session.username is not None
        name, address = session.username, self._address(request)
        if self.limiter.blocked(name, address):
            return self.render(request, session, "password.html", 429, username=name,
                               notice=TOO_MANY)  # fmt: skip
        form = await request.form()
        password = str(form.get("password", ""))
        user = await self.db(self.store.get_user, name)
        ok = await trio.to_thread.run_sync(
            verify_password, user.password_hash if user else None, password
        )
        if not ok or user is None:
            self.limiter.fail(name, address)
            return self.render(request, session, "password.html", 400, username=name,
                               notice=WRONG_PASSWORD)  # fmt: skip
        session.stage = Stage.PASSWORD_OK
        session.pending_user_id = user.id
        if user.totp_secret is None:
            return RedirectResponse("/signin/enrol", 303)
        return RedirectResponse("/signin/code", 303)

    async def _pending_user(self, session: Session) -> User:
        self._need_stage(session, Stage.PASSWORD_OK)
        user = None
        if session.pending_user_id is not None:
            user = await self.db(self.store.get_user_by_id, session.pending_user_id)
        if user is None:
            raise Expired("the account being signed in is gone")
        return user

    async def enrol_page(self, request: Request, session: Session, notice: str = "",
                         status: int = 200) -> Response:  # fmt: skip
        user = await self._pending_user(session)
        if user.totp_secret is not None:
            return RedirectResponse("/signin/code", 303)
        if session.enrol_secret is None:
            session.enrol_secret = new_totp_secret()
        uri = totp_uri(session.enrol_secret, user.name, self.config.name)
        return self.render(
            request, session, "enrol.html", status, username=user.name,
            secret=session.enrol_secret, otpauth=uri, qr=qr_data_uri(uri, 5), notice=notice,
        )  # fmt: skip

    async def enrol_submit(self, request: Request, session: Session) -> Response:
        user = await self._pending_user(session)
        if user.totp_secret is not None or session.enrol_secret is None:
            return RedirectResponse("/signin/code", 303)
        address = self._address(request)
        if self.limiter.blocked("code:" + user.name, address):
            return await self.enrol_page(request, session, TOO_MANY, 429)
        form = await request.form()
        step = match_totp(session.enrol_secret, str(form.get("code", "")), self.clock())
        if step is None:
            self.limiter.fail("code:" + user.name, address)
            return await self.enrol_page(request, session, WRONG_CODE, 400)
        await self.db(self.store.enrol_totp, user.id, session.enrol_secret, step)
        session.enrol_secret = None
        await self.db(self.store.add_audit, self.clock(), user.name, "second factor enrolled",
                      user.name, "TOTP")  # fmt: skip
        return await self._signed_in(request, session, user, via_password=True)

    async def code_page(self, request: Request, session: Session) -> Response:
        user = await self._pending_user(session)
        if user.totp_secret is None:
            return RedirectResponse("/signin/enrol", 303)
        return self.render(request, session, "code.html", username=user.name)

    async def code_submit(self, request: Request, session: Session) -> Response:
        user = await self._pending_user(session)
        if user.totp_secret is None:
            return RedirectResponse("/signin/enrol", 303)
        address = self._address(request)
        key = "code:" + user.name
        if self.limiter.blocked(key, address):
            return self.render(request, session, "code.html", 429, username=user.name,
                               notice=TOO_MANY)  # fmt: skip
        form = await request.form()
        step = match_totp(user.totp_secret, str(form.get("code", "")), self.clock())
        # A code is single-use: its time step must be later than the last one accepted.
        if step is None or not await self.db(self.store.use_totp_step, user.id, step):
            self.limiter.fail(key, address)
            return self.render(request, session, "code.html", 400, username=user.name,
                               notice=WRONG_CODE)  # fmt: skip
        self.limiter.succeed(key)
        self.limiter.succeed(user.name)
        return await self._signed_in(request, session, user, via_password=True)

    async def _signed_in(
        self, request: Request, session: Session, user: User, *, via_password: bool
    ) -> Response:
        session = self._rotate(request, session)
        session.stage = Stage.SIGNED_IN
        session.user_id = user.id
        session.pending_user_id = None
        request.state.user = user
        user = await self.db(self.store.record_signin, user.id)
        if via_password and await self._should_prompt(user):
            return RedirectResponse("/setup", 303)
        return RedirectResponse("/home", 303)

    async def _should_prompt(self, user: User) -> bool:
        passkeys = await self.db(self.store.passkeys_for, user.id)
        if len(passkeys) >= MAX_PASSKEYS:
            return False
        if user.prompt_skipped_at is None:
            return True
        elapsed = self.clock() - user.prompt_skipped_at
        return elapsed >= PROMPT_SNOOZE_SECONDS or user.signins_since_skip >= PROMPT_SNOOZE_SIGNINS

    async def signout(self, request: Request, session: Session) -> Response:
        self.sessions.drop(session)
        fresh = self.sessions.new()
        fresh.notice = "You are signed out."
        request.state.session = fresh
        return RedirectResponse("/signin", 303)

    # ---- set-up prompt and passkey creation -----------------------------------------------------

    async def setup_page(self, request: Request, session: Session) -> Response:
        return self.render(request, session, "setup.html")

    async def setup_later(self, request: Request, session: Session) -> Response:
        user = request.state.user
        await self.db(self.store.record_prompt_skip, user.id, self.clock())
        return RedirectResponse("/home", 303)

    async def passkey_new(self, request: Request, session: Session) -> Response:
        """ "Create a passkey": refuse past the limit, else show the phone QR code."""
        user: User = request.state.user
        try:
            ceremony = await self.db(
                self.rp.begin_registration, user, attachment=AuthenticatorAttachment.CROSS_PLATFORM
            )
        except PasskeyError as exc:
            return self.error_page(request, session, exc, back="/settings/security")
        return await self._start_phone_flow(request, session, user, ceremony)

    # ---- the phone ceremony ---------------------------------------------------------------------

    async def _start_phone_flow(
        self, request: Request, session: Session, user: User, ceremony: Ceremony
    ) -> Response:
        op = ceremony.operation
        # One phone ceremony per session: a new QR code replaces the previous one.
        for old_id in list(session.flows):
            old = self.flows.get(old_id, session.id)
            if old is not None and not old.finished:
                self.flows.cancel(old)
        phone = PhoneCeremony(self.config.phone, op, self.origin)
        try:
            await phone.check()
        except PasskeyError as exc:
            return self.error_page(request, session, exc)
        actor = user.name

        async def run(flow: Flow) -> None:
            options = ceremony.options.public_key
            if isinstance(options, PublicKeyCredentialCreationOptions):
                registration = await phone.make_credential(options, flow.status)
                flow.status(PhoneStatus.CHECKING)
                passkey = await self.db(
                    self.rp.complete_registration, ceremony, registration,
                    kind=PasskeyKind.PHONE, actor=actor, subject=user.name,
                )  # fmt: skip
            else:
                assertion = await phone.get_assertion(options, flow.status)
                flow.status(PhoneStatus.CHECKING)
                passkey = await self.db(self.rp.complete_authentication, ceremony, assertion)
            flow.succeed(passkey, f"/flows/{flow.id}/finish")

        flow = self.flows.start(session.id, op, phone.url, run)
        session.flows.add(flow.id)
        return RedirectResponse(f"/flows/{flow.id}", 303)

    def _flow(self, request: Request, session: Session) -> Flow:
        flow = self.flows.get(request.path_params["flow_id"], session.id)
        if flow is None:
            raise Expired("the ceremony in the URL is unknown or belongs to another session")
        return flow

    def _browser_catalogue(self, op: Operation) -> str:
        entries = {
            f.name: {
                "title": catalogue_entry(f, op).title,
                "message": catalogue_entry(f, op).message,
            }
            for f in BROWSER_FAILURES
        }
        return json.dumps(entries)

    async def flow_page(self, request: Request, session: Session) -> Response:
        flow = self._flow(request, session)
        last = flow.events[-1] if flow.events else None
        return self.render(
            request, session, "flow.html", flow=flow, qr=qr_data_uri(flow.url),
            status_text=str(last.status if last else PhoneStatus.SCAN),
            signin=flow.operation is Operation.SIGN_IN,
            catalogue=self._browser_catalogue(flow.operation),
        )  # fmt: skip

    async def flow_events(self, request: Request, session: Session) -> Response:
        flow = self._flow(request, session)

        async def stream():
            yield b"retry: 1000\n\n"
            async for event in flow.watch():
                yield f"data: {json.dumps(event.to_json())}\n\n".encode()

        return StreamingResponse(
            stream(), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    async def flow_cancel(self, request: Request, session: Session) -> Response:
        flow = self._flow(request, session)
        self.flows.cancel(flow)
        return JSONResponse({"cancelled": True})

    async def flow_finish(self, request: Request, session: Session) -> Response:
        flow = self._flow(request, session)
        if not flow.succeeded:
            if flow.error is not None:
                return self.error_page(request, session, flow.error)
            return RedirectResponse(f"/flows/{flow.id}", 303)
        session.flows.discard(flow.id)
        if flow.operation is Operation.SIGN_IN:
            self._need_stage(session, Stage.USERNAME)
            user = await self.db(self.store.get_user_by_id, flow.result.user_id)
            if user is None:
                raise Expired("the account is gone")
            return await self._signed_in(request, session, user, via_password=False)
        session.notice = "Your passkey was created."
        return RedirectResponse("/settings/security", 303)

    # ---- the browser's own WebAuthn -------------------------------------------------------------

    def _json_error(self, error: PasskeyError, status: int = 400) -> JSONResponse:
        logger.info("browser ceremony failed: %s", error)
        return JSONResponse(
            {"error": {"title": error.title, "message": error.message}}, status_code=status
        )

    async def _ceremony_user(self, request: Request, session: Session, op: Operation) -> User:
        if op is Operation.REGISTER:
            if request.state.user is None:
                raise Expired("not signed in")
            return request.state.user
        self._need_stage(session, Stage.USERNAME)
        user = await self.db(self.store.get_user, session.username)
        if user is None:
            raise PasskeyError(Failure.NO_CREDENTIAL, op, "no such account")
        return user

    @staticmethod
    def _op(request: Request) -> Operation:
        op = request.path_params["op"]
        if op == "register":
            return Operation.REGISTER
        if op == "login":
            return Operation.SIGN_IN
        raise Expired(f"unknown ceremony {op!r}")

    async def webauthn_begin(self, request: Request, session: Session) -> Response:
        op = self._op(request)
        try:
            user = await self._ceremony_user(request, session, op)
            if op is Operation.REGISTER:
                ceremony = await self.db(self.rp.begin_registration, user)
            else:
                ceremony = await self.db(self.rp.begin_authentication, user)
        except PasskeyError as exc:
            return self._json_error(exc)
        session.ceremony = {"ceremony": ceremony}
        return JSONResponse(dict(ceremony.options))

    async def webauthn_complete(self, request: Request, session: Session) -> Response:
        op = self._op(request)
        # Single-use: the state leaves the session whatever happens next.
        pending, session.ceremony = session.ceremony, None
        ceremony: Ceremony | None = pending["ceremony"] if pending else None
        if ceremony is None or ceremony.operation is not op:
            return self._json_error(PasskeyError(Failure.SESSION_EXPIRED, op, "no challenge"))
        try:
            body = await request.json()
        except ValueError:
            return self._json_error(PasskeyError(Failure.PROTOCOL_ERROR, op, "body is not JSON"))
        try:
            if op is Operation.REGISTER:
                user = request.state.user
                if user is None or user.id != ceremony.user_id:
                    raise PasskeyError(Failure.SESSION_EXPIRED, op, "another account's challenge")
                attachment = body.get("authenticatorAttachment") if isinstance(body, dict) else None
                kind = (
                    PasskeyKind.THIS_DEVICE
                    if attachment == "platform"
                    else (PasskeyKind.SECURITY_KEY)
                )
                await self.db(
                    self.rp.complete_registration, ceremony, body, kind=kind, actor=user.name,
                    subject=user.name,
                )  # fmt: skip
                session.notice = "Your passkey was created."
                return JSONResponse({"redirect": "/settings/security"})
            passkey = await self.db(self.rp.complete_authentication, ceremony, body)
        except PasskeyError as exc:
            return self._json_error(exc)
        user = await self.db(self.store.get_user_by_id, passkey.user_id)
        response = await self._signed_in(request, session, user, via_password=False)
        return JSONResponse({"redirect": response.headers["location"]})

    # ---- signed-in pages ------------------------------------------------------------------------

    async def home(self, request: Request, session: Session) -> Response:
        return self.render(request, session, "home.html")

    async def settings_profile(self, request: Request, session: Session) -> Response:
        return self.render(request, session, "settings_profile.html", tab="profile")

    async def settings_security(self, request: Request, session: Session) -> Response:
        user = request.state.user
        passkeys = await self.db(self.store.passkeys_for, user.id)
        notice, session.notice = session.notice, None
        return self.render(
            request, session, "settings_security.html", tab="security", passkeys=passkeys,
            notice=notice, limit=MAX_PASSKEYS,
        )  # fmt: skip

    async def settings_remove(self, request: Request, session: Session) -> Response:
        user = request.state.user
        form = await request.form()
        try:
            passkey_id = int(str(form.get("passkey", "")))
        except ValueError:
            raise Expired("the form names no passkey") from None
        removed = await self.db(
            self.store.remove_passkeys, user.id, [passkey_id], actor=user.name,
            subject=user.name, now=self.clock(),
        )  # fmt: skip
        if not removed:
            # Someone else's passkey id, or one removed meanwhile: the form was modified.
            raise Expired("that passkey is not one of yours")
        session.notice = f"Removed {removed[0].name}."
        return RedirectResponse("/settings/security", 303)

    # ---- administration -------------------------------------------------------------------------

    async def admin_users(self, request: Request, session: Session, notice: str = "",
                          status: int = 200) -> Response:  # fmt: skip
        users = await self.db(self.store.list_users)
        counts = {u.id: len(await self.db(self.store.passkeys_for, u.id)) for u in users}
        return self.render(request, session, "admin_users.html", status, users=users,
                           counts=counts, roles=ROLES, notice=notice)  # fmt: skip

    async def admin_add_user(self, request: Request, session: Session) -> Response:
        actor: User = request.state.user
        if actor.role not in PASSKEY_REMOVAL_ROLES:
            raise Forbidden("Only administrators can add users.")
        form = await request.form()
        name = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        role = str(form.get("role", "user"))
        if role == "superuser" and actor.role != "superuser":
            raise Forbidden("Only a super user can make another super user.")
        from hybrid.portal.accounts import AccountError, create_account

        try:
            await self.db(create_account, self.store, name, password, role, self.clock())
        except (AccountError, UserExistsError) as exc:
            return await self.admin_users(request, session, str(exc), 400)
        await self.db(self.store.add_audit, self.clock(), actor.name, "user added", name, role)
        return await self.admin_users(request, session, f"Added {name}.")

    async def _subject(self, request: Request) -> User:
        user = await self.db(self.store.get_user, request.path_params["name"])
        if user is None:
            raise Expired("no such user")
        return user

    async def admin_user(self, request: Request, session: Session) -> Response:
        subject = await self._subject(request)
        return self.render(request, session, "admin_user.html", subject=subject, tab="profile")

    async def admin_user_security(self, request: Request, session: Session) -> Response:
        subject = await self._subject(request)
        passkeys = await self.db(self.store.passkeys_for, subject.id)
        notice, session.notice = session.notice, None
        return self.render(
            request, session, "admin_user_security.html", subject=subject, passkeys=passkeys,
            tab="security", notice=notice,
            may_remove=request.state.user.role in PASSKEY_REMOVAL_ROLES,
        )  # fmt: skip

    async def admin_remove(self, request: Request, session: Session) -> Response:
        actor: User = request.state.user
        if actor.role not in PASSKEY_REMOVAL_ROLES:
            raise Forbidden("Your role cannot remove passkeys.")
        subject = await self._subject(request)
        form = await request.form()
        try:
            chosen = [int(str(v)) for v in form.getlist("passkey")]
        except ValueError:
            raise Expired("the form names no passkey") from None
        removed = await self.db(
            self.store.remove_passkeys, subject.id, chosen or None, actor=actor.name,
            subject=subject.name, now=self.clock(),
        )  # fmt: skip
        session.notice = f"Removed {len(removed)} passkey{'s' if len(removed) != 1 else ''}."
        return RedirectResponse(f"/admin/users/{subject.name}/security", 303)

    async def admin_audit(self, request: Request, session: Session) -> Response:
        entries = await self.db(self.store.audit_entries)
        return self.render(request, session, "admin_audit.html", entries=entries)


class _SecurityHeaders:
    """ASGI wrapper: strict headers on every response, and one canonical host name.

    WebAuthn needs the page's host to be a domain (``localhost``), not an IP address, so a visit
    under another name is redirected to the portal's own origin.
    """

    def __init__(self, app: Any, public_host: str, origin: str) -> None:
        self.app = app
        self.public_host = public_host
        self.origin = origin

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host
        if hostname and hostname != self.public_host:
            target = self.origin + scope.get("raw_path", b"/").decode("latin-1")
            query = scope.get("query_string", b"").decode("latin-1")
            await RedirectResponse(target + (f"?{query}" if query else ""), 307)(
                scope, receive, send
            )
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                    (
                        b"content-security-policy",
                        b"default-src 'self'; img-src 'self' data:; script-src 'self'; "
                        b"style-src 'self'; frame-ancestors 'none'; form-action 'self'",
                    ),
                ]
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["Portal", "StorageError", "qr_data_uri"]
