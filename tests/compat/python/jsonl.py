"""Line protocol shared by the compat peers: one JSON object per line on stdin (commands) and on
stdout (replies and events). The Rust side (tests/compat/peer.rs) writes commands and awaits
lines; nothing else may be printed on stdout, so logging goes to stderr.

A command is {"id": N, "op": NAME, ...}; its reply is {"re": N, "ok": true, ...} or
{"re": N, "ok": false, "error": TYPE, "message": TEXT, "cause": TEXT or null} (cause: the
exception the SDK wrapped, e.g. the ServiceError inside a ClientError). Events are
{"event": NAME, ...}.
"""

import json
import sys
import threading
import traceback

_out = threading.Lock()


def emit(**fields):
    """Writes one line to stdout, whole, from any thread."""
    line = json.dumps(fields, sort_keys=True)
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def reply(command, **fields):
    emit(re=command.get("id"), ok=True, **fields)


def fail(command, error):
    emit(
        re=command.get("id"),
        ok=False,
        error=type(error).__name__,
        message=str(error),
        cause=None if error.__cause__ is None else f"{type(error.__cause__).__name__}: {error.__cause__}",
        trace=traceback.format_exc(limit=3),
    )


def commands():
    """Yields commands until stdin closes (the test ended or dropped the peer)."""
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)
