"""A real MCP client (the official Python SDK, `mcp` on PyPI) driving the bridge's /mcp.

Run by the e2e test `mcp::a_real_mcp_client_runs_reads_the_log_and_cancels` with the
interpreter of the venv `scripts/install-python-tools.sh` makes. Usage:

    HB_TOKEN=<token> python mcp_client.py <bridge url> <slow adapter>

It makes the calls an agent would and prints one JSON document: what each call answered.
The Rust test asserts on it, so this script only records; it exits non-zero only when the
SDK itself fails.
"""

import asyncio
import json
import os
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def tool_answer(result):
    """A tool result as JSON: its structured content and whether it is an error."""
    return {"is_error": bool(result.is_error), "value": result.structured_content}


async def session(url, token, statuses=None):
    """The transport for a Client sending this token; the HTTP status of every answer is
    appended to `statuses`."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    if statuses is not None:

        async def record(response):
            statuses.append(response.status_code)

        http.event_hooks = {"response": [record]}
    return streamable_http_client(f"{url}/mcp", http_client=http)


async def scenario(url, token, slow_adapter):
    out = {}
    async with Client(await session(url, token)) as client:
        out["protocol_version"] = client.session.protocol_version
        tools = await client.list_tools()
        out["tools"] = sorted(tool.name for tool in tools.tools)

        progress = []

        async def on_progress(value, total, message):
            progress.append({"progress": value, "message": message})

        started = await client.call_tool(
            "start_run",
            {"adapter": "codex", "prompt": "Say hello over MCP", "wait_s": 120},
            progress_callback=on_progress,
        )
        out["start_run"] = tool_answer(started)
        out["progress"] = progress
        run_id = (started.structured_content or {}).get("id")

        templates = await client.list_resource_templates()
        out["templates"] = [t.uri_template for t in templates.resource_templates]
        resources = await client.list_resources()
        out["resources"] = [str(r.uri) for r in resources.resources]
        log = await client.read_resource(f"run://{run_id}/log")
        out["log"] = [getattr(c, "text", None) for c in log.contents]

        fetched = await client.call_tool("get_run", {"id": run_id})
        out["get_run"] = tool_answer(fetched)

        slow = await client.call_tool(
            "start_run", {"adapter": slow_adapter, "prompt": "wait", "wait_s": 0}
        )
        out["slow_run"] = tool_answer(slow)
        slow_id = (slow.structured_content or {}).get("id")
        cancelled = await client.call_tool("cancel_run", {"id": slow_id})
        out["cancel_run"] = tool_answer(cancelled)
        again = await client.call_tool("cancel_run", {"id": slow_id})
        out["cancel_again"] = tool_answer(again)

        refused = await client.call_tool("start_run", {"adapter": "no-such-cli", "prompt": "x"})
        out["refused"] = tool_answer(refused)
        adapters = await client.call_tool("list_adapters", {})
        out["list_adapters"] = tool_answer(adapters)

    # The same SDK with a wrong token: the bridge must refuse before any MCP exchange.
    statuses = []
    try:
        async with Client(await session(url, "not-the-token-0123456789", statuses)) as client:
            await client.list_tools()
        connected = True
    except Exception:  # the SDK raises an exception group from its task group
        connected = False
    out["wrong_token"] = {"connected": connected, "statuses": statuses}
    return out


def main():
    url, slow_adapter = sys.argv[1], sys.argv[2]
    token = os.environ["HB_TOKEN"]
    print(json.dumps(asyncio.run(scenario(url, token, slow_adapter))))


if __name__ == "__main__":
    main()
