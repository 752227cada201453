"""Sending messages and polling for replies: every reply collected, the timeout honoured."""

from __future__ import annotations

import time
from types import SimpleNamespace

import medi_server.messaging as messaging
from medi_server.messaging import send_and_receive


class SlowGrid:
    """Return the reply to message ``i`` from the ``i``-th pull on; a message to node 0 never gets a reply."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        return [f"id-{m}" for m in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        due = [i for i in message_ids if i != "id-0" and int(i.split("-")[1]) <= self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in due]


def test_send_and_receive_collects_all_replies(monkeypatch):
    monkeypatch.setattr(messaging, "POLL_SECONDS", 0.01)
    grid = SlowGrid()
    replies = send_and_receive(grid, [1, 2, 3], timeout=10.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["id-1", "id-2", "id-3"]
    assert grid.pulls == 3


def test_send_and_receive_stops_at_timeout(monkeypatch):
    monkeypatch.setattr(messaging, "POLL_SECONDS", 0.01)
    started = time.monotonic()
    replies = send_and_receive(SlowGrid(), [0, 1], timeout=0.2)
    assert [r.metadata.reply_to_message_id for r in replies] == ["id-1"]
    assert time.monotonic() - started < 2.0
