"""The notes app's client: add and list notes, follow the notes a user's other devices add.

Built on ``gatewayd.client.GatewayClient``: every answer and event it hands out was verified
against the gateway's published keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet.defer import Deferred

from gatewayd.client import GatewayClient, VerifiedEvent

NOTE_CREATED = "user.note.created"


class NotesError(Exception):
    """The backend refused; the message is its result_code."""


class Following:
    """A subscription: ``ready`` fires once notes published from now on will arrive; ``ended`` when it ends."""

    def __init__(self, client: GatewayClient, on_note: Callable[[str], None]) -> None:
        self.ready: Deferred[None] = Deferred()

        def on_event(event: VerifiedEvent) -> None:
            if not self.ready.called:  # the first event is the gateway's server time
                self.ready.callback(None)
            elif event.event_type == NOTE_CREATED:
                on_note(json.loads(event.payload_bytes)["text"])

        self.ended: Deferred[None] = client.subscribe(on_event)

    def stop(self) -> None:
        self.ended.cancel()


class Notes:
    """One user's notes, through a logged-in ``GatewayClient``."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    async def add(self, text: str) -> str:
        """Add a note; its note_id."""
        response = await self.client.execute("user.notes.create", {"text": text})
        if not response.ok:
            raise NotesError(response.result_code)
        note_id: str = json.loads(response.payload_bytes)["note_id"]
        return note_id

    async def texts(self) -> list[str]:
        """Every note's text, oldest first."""
        response = await self.client.execute("user.notes.list")
        if not response.ok:
            raise NotesError(response.result_code)
        return [note["text"] for note in json.loads(response.payload_bytes)["notes"]]

    def follow(self, on_note: Callable[[str], None]) -> Following:
        """Call ``on_note(text)`` for every note created for this user from now on."""
        return Following(self.client, on_note)
