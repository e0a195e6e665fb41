"""A real MCP server for the MCP gateway test (server/tests/api/mcp.rs), written with the
official Python SDK (mcp 2.x, pinned in server/tests/sdk/requirements.txt).

    RECORD_FILE=/tmp/rec.jsonl [LEGACY_ONLY=1] python upstream.py PORT

Streamable HTTP at http://127.0.0.1:PORT/mcp. The SDK's app serves both protocol
revisions (chosen per request by MCP-Protocol-Version). Every HTTP request it receives
is recorded as one JSON line (method, path, headers, body) in $RECORD_FILE, so the test
can check what reached the server: the injected credential, never the agent's AEGIS key,
never a tool that was filtered out. With LEGACY_ONLY=1 it answers like a server of the
session revision (2025-11-25) only: a POST without an Mcp-Session-Id that is not
`initialize` gets the 400 "Missing session ID" such servers send, so AEGIS must fall
back to initialize + session.
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
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers,
                                "body": body.decode("utf-8", "replace")}) + "\n")
        if os.environ.get("LEGACY_ONLY") == "1" and scope["method"] == "POST" and "mcp-session-id" not in headers:
            try:
                method = json.loads(body).get("method")
            except (ValueError, AttributeError):
                method = None
            if method != "initialize":
                error = json.dumps({"jsonrpc": "2.0", "id": "server-error",
                                    "error": {"code": -32600, "message": "Bad Request: Missing session ID"}}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": error})
                return
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
