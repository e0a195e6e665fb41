"""A real MCP server for the MCP gateway test (server/tests/api/mcp.rs), written with the
official Python SDK (mcp 2.x, pinned in server/tests/sdk/requirements.txt).

    RECORD_FILE=/tmp/rec.jsonl python upstream.py PORT

Streamable HTTP at http://127.0.0.1:PORT/mcp. The SDK's app serves both protocol
revisions (chosen per request by MCP-Protocol-Version). Every HTTP request it receives
is recorded as one JSON line (method, path, headers, body) in $RECORD_FILE, so the test
can check what reached the server: the injected credential, never the agent's AEGIS key,
never a tool that was filtered out. Prints "ready" once it listens.
"""

from __future__ import annotations

import json
import os
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

NOTES = {"welcome": "Hello from the note store.", "todo": "write the gateway", "scratch": "temporary"}

mcp = MCPServer(name="notes-upstream", version="1.0.0")


@mcp.tool()
def read_note(name: str) -> str:
    """Read a note by name."""
    if name not in NOTES:
        raise ValueError(f"note {name!r} not found")
    return NOTES[name]


@mcp.tool()
def delete_note(name: str) -> str:
    """Delete a note by name."""
    if NOTES.pop(name, None) is None:
        raise ValueError(f"note {name!r} not found")
    return f"deleted {name}"


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
def drop_all() -> str:
    """Delete every note (left out of the connection's allow-list by the test)."""
    NOTES.clear()
    return "dropped"


@mcp.tool()
def admin_reset() -> str:
    """A tool the test's policy denies outright (so it is not listed)."""
    return "reset"


class Record:
    """ASGI middleware: one JSON line per HTTP request received."""

    def __init__(self, app, path):
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body, replay = b"", []
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                replay.append(msg)
                break
            body += msg.get("body", b"")
            if not msg.get("more_body", False):
                break
        with open(self.path, "a", encoding="utf-8") as f:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            f.write(json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers,
                                "body": body.decode("utf-8", "replace")}) + "\n")
        pending = [{"type": "http.request", "body": body, "more_body": False}, *replay]

        async def again():
            return pending.pop(0) if pending else await receive()

        await self.app(scope, again, send)


def main() -> None:
    port = int(sys.argv[1])
    app = mcp.streamable_http_app(streamable_http_path="/mcp", json_response=True, host="127.0.0.1")
    config = uvicorn.Config(Record(app, os.environ["RECORD_FILE"]), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
