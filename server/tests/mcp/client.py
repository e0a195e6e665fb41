"""An unmodified MCP client (the official Python SDK, mcp 2.x) pointed at AEGIS's /mcp
with an agent's AEGIS key, for server/tests/api/mcp.rs.

    python client.py URL KEY MODE list
    python client.py URL KEY MODE call TOOL ARGUMENTS_JSON

MODE is "modern" (the SDK's default: 2026-07-28, stateless, server/discover) or
"legacy" (mode="legacy": 2025-11-25, initialize + Mcp-Session-Id). Prints one JSON
object: the tool names, or the call's result (isError, text, structuredContent,
_meta), or a JSON-RPC error (code, message).
"""

from __future__ import annotations

import asyncio
import json
import sys

import warnings

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

warnings.simplefilter("ignore")


async def main() -> None:
    url, key, mode, step, *rest = sys.argv[1:]
    # The SDK takes extra headers through the httpx2 client it is handed.
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0, read=120.0))
    kwargs = {"mode": "legacy"} if mode == "legacy" else {}
    async with http, Client(streamable_http_client(url, http_client=http), **kwargs) as client:
        out: dict = {}
        try:
            if step == "list":
                tools = await client.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                out["schemas"] = {t.name: t.input_schema for t in tools.tools}
            else:
                name, arguments = rest[0], json.loads(rest[1])
                progress: list[str] = []

                async def heard(done: float, total: float | None, message: str | None) -> None:
                    progress.append(message or "")

                result = await client.call_tool(name, arguments, progress_callback=heard)
                out.update(
                    progress=progress,
                    isError=bool(result.is_error),
                    text="".join(getattr(c, "text", "") for c in result.content),
                    structured=result.structured_content,
                    meta=result.meta,
                )
        except MCPError as e:
            out["error"] = {"code": e.code, "message": str(e)}
    print(json.dumps(out, default=str))


asyncio.run(main())
