"""Sending messages and polling for replies: every reply collected, the timeout honoured, the sender named."""

from __future__ import annotations

import time
from types import SimpleNamespace

from flwr.app import Metadata

import medi_server.messaging as messaging
from medi_server.messaging import send_and_receive


def _metadata(message_id: str, src: int, dst: int, reply_to: str = "") -> Metadata:
    return Metadata(run_id=1, message_id=message_id, src_node_id=src, dst_node_id=dst, reply_to_message_id=reply_to,
                    group_id="1", created_at=0.0, ttl=60.0, message_type="train")


class SlowGrid:
    """Return the reply to the message for node ``i`` from the ``i``-th pull on; node 0 never replies.

    With ``superlink_replies`` the replies come with the SuperLink's node id 1 as their source,
    as the SuperLink's own error replies for a disconnected node do.
    """

    def __init__(self, superlink_replies: bool = False) -> None:
        self.pulls = 0
        self.superlink_replies = superlink_replies

    def push_messages(self, messages):
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"id-{message.metadata.dst_node_id}"
        return [message.metadata.message_id for message in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        due = [i for i in message_ids if i != "id-0" and int(i.split("-")[1]) <= self.pulls]
        return [
            SimpleNamespace(metadata=_metadata(f"re-{i}", 1 if self.superlink_replies else int(i[3:]), 0, i))
            for i in due
        ]


def _requests(*nodes: int) -> list:
    return [SimpleNamespace(metadata=_metadata("", 0, node)) for node in nodes]


def test_send_and_receive_collects_all_replies(monkeypatch):
    monkeypatch.setattr(messaging, "POLL_SECONDS", 0.01)
    grid = SlowGrid()
    replies = send_and_receive(grid, _requests(1, 2, 3), timeout=10.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["id-1", "id-2", "id-3"]
    assert grid.pulls == 3


def test_send_and_receive_stops_at_timeout(monkeypatch):
    monkeypatch.setattr(messaging, "POLL_SECONDS", 0.01)
    started = time.monotonic()
    replies = send_and_receive(SlowGrid(), _requests(0, 1), timeout=0.2)
    assert [r.metadata.reply_to_message_id for r in replies] == ["id-1"]
    assert time.monotonic() - started < 2.0


def test_superlink_error_reply_names_site_node(monkeypatch):
    monkeypatch.setattr(messaging, "POLL_SECONDS", 0.01)
    replies = send_and_receive(SlowGrid(superlink_replies=True), _requests(7, 9), timeout=10.0)
    assert sorted(r.metadata.src_node_id for r in replies) == [7, 9]
