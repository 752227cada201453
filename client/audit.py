"""Audit log of what a site sends: one JSON line per reply, written before it leaves the SuperNode.

For every array the line lists name, dtype and shape, never values. For
config and metric records it lists keys and values, because those are small
and are exactly what a data-protection officer needs to read. Enabled by the
node config key ``audit-log``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from medi_core import protocol as P


def describe_reply(reply: Message) -> dict[str, Any]:
    """Describe a reply as JSON-serialisable data: record names, array shapes, config and metric values."""
    entry: dict[str, Any] = {
        "time": time.time(),
        "message_type": reply.metadata.message_type,
        "group_id": reply.metadata.group_id,
    }
    if reply.has_error():
        entry["error"] = reply.error.reason
        return entry
    content = reply.content
    entry["arrays"] = {
        record_name: {name: {"dtype": a.dtype, "shape": list(a.shape)} for name, a in record.items()}
        for record_name, record in content.array_records.items()
    }
    entry["configs"] = {name: dict(record) for name, record in content.config_records.items()}
    entry["metrics"] = {name: dict(record) for name, record in content.metric_records.items()}
    return entry


def audit_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: pass the message on, then append a description of the reply to the audit log."""
    reply = call_next(message, context)
    path = str(context.node_config.get(P.NODE_AUDIT_LOG, "")).strip()
    if path:
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(describe_reply(reply), default=str) + "\n")
    return reply
