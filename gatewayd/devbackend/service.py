"""The reference backend (PROTOCOL.md sections 5 and 6): its state, operations and listeners.

``DevBackend`` holds everything in memory (users, sessions, email challenges,
notes) and publishes push events on its ``PushBus``. ``make_http_site`` serves
it over HTTP; ``push_methods(backend.bus)`` is its gRPC push method table;
``gatewayd.devbackend.listeners`` puts both on ports.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web.server import Site

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.devbackend.errors import ApiError, invalid_argument, not_found
from gatewayd.devbackend.push import PushBus

RandomBytes = Callable[[int], bytes]
"""``random_bytes(n)`` returns ``n`` unpredictable bytes (``os.urandom`` in production)."""


class SecondsClock(Protocol):
    """What the backend needs of a clock: ``IReactorTime.seconds`` (a reactor or a ``Clock``)."""

    def seconds(self) -> float: ...


_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
MAX_EMAIL_CHARS = 254
MAX_DISPLAY_NAME_CHARS = 100
MAX_NOTE_CHARS = 4096

_log = Logger()
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class User:
    user_id: str
    email: str
    display_name: str = ""
    notes: deque[dict[str, str]] = field(default_factory=deque)

    def profile(self) -> dict[str, str]:
        return {"user_id": self.user_id, "email": self.email, "display_name": self.display_name}


@dataclass(slots=True)
class Session:
    """A device session; ``client_public_key`` is standard padded base64 of the raw 32-byte key."""

    device_session_id: str
    user_id: str
    client_public_key: str
    status: str = "active"

    def as_json(self) -> dict[str, str]:
        return {
            "device_session_id": self.device_session_id,
            "user_id": self.user_id,
            "client_public_key": self.client_public_key,
            "status": self.status,
        }


@dataclass(slots=True)
class Challenge:
    challenge_id: str
    email: str
    code: str
    expires_at: float
    failed_attempts: int = 0


class DevBackend:
    """In-memory reference backend.

    Promises: the same (normalised, lowercased) email always maps to the same
    user_id; a challenge is good for one successful confirm, ``challenge_ttl_s``
    seconds, and ``max_code_attempts`` wrong codes; ``fixed_code`` (dev mode),
    when set, is accepted for any live challenge alongside the issued code.
    Every issued code is logged: that is how a developer reads it.

    With ``debug`` on, every request under ``/api/v1/user/`` (routed or not)
    is recorded in ``received`` (the newest ``received_limit``), and the debug routes are
    served (see ``gatewayd.devbackend.http``). Each user keeps their newest
    ``max_notes_per_user`` notes (older ones are dropped, so a benchmark that
    creates notes for minutes does not make ``notes.list`` answers unbounded).

    Revocation publishes one ``SessionInvalidation`` per call that revoked
    anything: for an explicit ``device_session_id`` it names that session; for
    "every session of the user" it carries an empty ``device_session_id``.
    """

    def __init__(
        self,
        clock: SecondsClock,
        random_bytes: RandomBytes = os.urandom,
        *,
        fixed_code: str | None = None,
        debug: bool = False,
        challenge_ttl_s: float = 600.0,
        max_code_attempts: int = 5,
        received_limit: int = 10_000,
        max_notes_per_user: int = 1_000,
        bus: PushBus | None = None,
    ) -> None:
        if fixed_code is not None and not re.fullmatch(r"[0-9]{6}", fixed_code):
            raise ValueError("fixed_code must be six digits")
        self.clock = clock
        self.random_bytes = random_bytes
        self.fixed_code = fixed_code
        self.debug = debug
        self.challenge_ttl_s = challenge_ttl_s
        self.max_code_attempts = max_code_attempts
        self.max_notes_per_user = max_notes_per_user
        self.bus = bus if bus is not None else PushBus()
        self.received: deque[dict[str, Any]] = deque(maxlen=received_limit)
        self._users: dict[str, User] = {}
        self._users_by_email: dict[str, User] = {}
        self._sessions: dict[str, Session] = {}
        self._sessions_by_user: dict[str, list[Session]] = {}
        # Insertion order is expiry order (one TTL for all), so expired ones are purged from the front.
        self._challenges: OrderedDict[str, Challenge] = OrderedDict()
        # Event ids: a random per-instance prefix plus a counter, unique without a random draw per event.
        self._event_prefix = "ev_" + self._token(6)
        self._event_counter = 0

    # -- auth -------------------------------------------------------------

    def send_email_code(self, email: str) -> str:
        """Issue a six-digit code for ``email`` (logged) and return its challenge_id."""
        email = _normalise_email(email)
        self._purge_expired_challenges()
        code = f"{int.from_bytes(self.random_bytes(8), 'big') % 1_000_000:06d}"
        challenge_id = "ch_" + self._token(16)
        self._challenges[challenge_id] = Challenge(
            challenge_id, email, code, self.clock.seconds() + self.challenge_ttl_s
        )
        _log.info(
            "dev backend: email code for {email} is {code} (challenge {challenge_id})",
            email=email,
            code=code,
            challenge_id=challenge_id,
        )
        return challenge_id

    def confirm_email_code(self, challenge_id: str, code: str, client_public_key: str) -> Session:
        """Exchange a challenge and its code for a new active session (creating the user if new).

        Raises ``ApiError``: 400 for a malformed key, 404 for an unknown,
        expired, used or exhausted challenge, 401 for a wrong code.
        """
        key = _canonical_public_key(client_public_key)
        self._purge_expired_challenges()
        challenge = self._challenges.get(challenge_id)
        if challenge is None:
            raise not_found("unknown or expired challenge")
        if not self._code_matches(challenge, code):
            challenge.failed_attempts += 1
            if challenge.failed_attempts >= self.max_code_attempts:
                del self._challenges[challenge_id]
            raise ApiError(401, "unauthenticated", "wrong code")
        del self._challenges[challenge_id]
        user = self._users_by_email.get(challenge.email)
        if user is None:
            user = User("usr_" + self._token(8), challenge.email, notes=deque(maxlen=self.max_notes_per_user))
            self._users[user.user_id] = user
            self._users_by_email[user.email] = user
            _log.info("dev backend: new user {user_id} for {email}", user_id=user.user_id, email=user.email)
        session = Session("ds_" + self._token(16), user.user_id, key)
        self._sessions[session.device_session_id] = session
        self._sessions_by_user.setdefault(user.user_id, []).append(session)
        return session

    def session(self, device_session_id: str) -> Session | None:
        """The session, active or revoked, or ``None`` when unknown."""
        return self._sessions.get(device_session_id)

    # -- user routes --------------------------------------------------------

    def profile(self, user_id: str) -> dict[str, str]:
        return self._user(user_id).profile()

    def update_profile(self, user_id: str, display_name: str) -> dict[str, str]:
        """Set the display name; pushes ``user.profile.updated`` (payload: the profile)."""
        if len(display_name) > MAX_DISPLAY_NAME_CHARS:
            raise invalid_argument(f"display_name is longer than {MAX_DISPLAY_NAME_CHARS} characters")
        user = self._user(user_id)
        user.display_name = display_name
        profile = user.profile()
        self._publish_client_event(user_id, "user.profile.updated", profile)
        return profile

    def create_note(self, user_id: str, text: str) -> dict[str, str]:
        """Store a note; pushes ``user.note.created`` (payload ``{"note_id", "text"}``)."""
        if not 1 <= len(text) <= MAX_NOTE_CHARS:
            raise invalid_argument(f"text must be 1 to {MAX_NOTE_CHARS} characters")
        user = self._user(user_id)
        note = {"note_id": "note_" + self._token(8), "text": text}
        user.notes.append(note)
        self._publish_client_event(user_id, "user.note.created", note)
        return dict(note)

    def list_notes(self, user_id: str) -> list[dict[str, str]]:
        """The user's notes, oldest first."""
        return [dict(n) for n in self._user(user_id).notes]

    def revoke_sessions(self, user_id: str, device_session_id: str | None = None) -> int:
        """Revoke one of the user's sessions, or all of them when ``device_session_id`` is None.

        Returns how many sessions went from active to revoked; sessions of
        other users are never touched (they count as 0).
        """
        sessions = self._sessions_by_user.get(user_id, [])
        if device_session_id is not None:
            sessions = [s for s in sessions if s.device_session_id == device_session_id]
        revoked = 0
        for session in sessions:
            if session.status == "active":
                session.status = "revoked"
                revoked += 1
        if revoked:
            self.bus.publish(
                push_pb2.PushEvent(
                    session_invalidation=push_pb2.SessionInvalidation(
                        user_id=user_id, device_session_id=device_session_id or "", reason="revoked"
                    )
                )
            )
        return revoked

    def record(self, entry: dict[str, Any]) -> None:
        """Remember one request under /api/v1/user/ (debug mode only)."""
        if self.debug:
            self.received.append(entry)

    # -- internals ------------------------------------------------------------

    def _user(self, user_id: str) -> User:
        user = self._users.get(user_id)
        if user is None:
            raise not_found("unknown user")
        return user

    def _code_matches(self, challenge: Challenge, code: str) -> bool:
        given = code.encode()
        if hmac.compare_digest(given, challenge.code.encode()):
            return True
        return self.fixed_code is not None and hmac.compare_digest(given, self.fixed_code.encode())

    def _purge_expired_challenges(self) -> None:
        now = self.clock.seconds()
        while self._challenges:
            first = next(iter(self._challenges.values()))
            if first.expires_at > now:
                break
            self._challenges.popitem(last=False)

    def _publish_client_event(self, user_id: str, event_type: str, payload: dict[str, str]) -> None:
        self._event_counter += 1
        self.bus.publish(
            push_pb2.PushEvent(
                client_event=push_pb2.ClientEvent(
                    user_id=user_id,
                    device_session_id="",
                    event_type=event_type,
                    event_id=f"{self._event_prefix}_{self._event_counter}",
                    payload_bytes=_compact_json(payload).encode(),
                    timestamp_ms=int(self.clock.seconds() * 1000),
                )
            )
        )

    def _token(self, n: int) -> str:
        return self.random_bytes(n).hex()


def _normalise_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_CHARS or not _EMAIL.match(email):
        raise invalid_argument("email is not a valid address")
    return email


def _canonical_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise invalid_argument("client_public_key is not base64") from None
    if len(raw) != 32:
        raise invalid_argument("client_public_key must be a 32-byte Ed25519 key")
    return base64.b64encode(raw).decode("ascii")


def make_http_site(backend: DevBackend) -> Site:
    """A ``Site`` serving every route of ``backend``.

    No access log (it would cost more than the work) and no form parsing
    (every body is JSON; twisted.web's content-type parse is a large share of a POST's cost).
    """
    from gatewayd.devbackend.http import DevBackendResource

    return _QuietSite(DevBackendResource(backend), parsePOSTFormSubmission=False)


class _QuietSite(Site):
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass
