"""An in-process Flower `Grid` that delivers messages straight to the real ClientApp (test helper).

It runs the real ServerApp logic and the real ClientApp handlers in one
process, without a SuperLink, so tests can inspect every message, corrupt a
reply or drop a node. Replies pass through ``reply_hook(node_id, reply)``,
which may record or replace them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.serverapp import Grid

ReplyHook = Callable[[int, Message], Message]


class InProcessGrid(Grid):
    """Runs each message through ``client_app`` with the destination node's config."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, Any]],
        run_config: Mapping[str, Any],
        *,
        reply_hook: ReplyHook | None = None,
    ) -> None:
        self.client_app = client_app
        self.node_configs = dict(node_configs)
        self.run_config = dict(run_config)
        self.reply_hook = reply_hook
        self.offline: set[int] = set()
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._run = Run.create_empty(run_id=1)
        self._states = {node: RecordDict() for node in node_configs}
        # A ServerApp process gets its identity from the SuperLink; here the test plays that part.
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.node_configs if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id  # the SuperLink assigns ids in a deployment
            message.metadata.__dict__["_run_id"] = self._run.run_id
            self.sent.append(message)
            node = message.metadata.dst_node_id
            if node in self.offline:
                # Delivery is synchronous, so an offline node's reply can never come: leave its id out
                # so that a caller polling for replies does not wait for the round timeout.
                continue
            ids.append(message_id)
            context = Context(
                run_id=self._run.run_id, node_id=node, node_config=dict(self.node_configs[node]),
                state=self._states[node], run_config=dict(self.run_config),
            )
            try:
                reply = self.client_app(message, context)
            except Exception as err:  # noqa: BLE001 - Flower turns handler exceptions into error replies too
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=message)
            if self.reply_hook is not None:
                reply = self.reply_hook(node, reply)
            self._replies[message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        # Delivery is synchronous, so `timeout` never expires: a missing reply means the node is offline.
        return list(self.pull_messages(list(self.push_messages(messages))))
