# AEGIS example policy for agents that use MCP tools (issue #21).
#
# Every tool call through `/mcp` is evaluated with, beside the usual agent, action,
# wallet and time, input.mcp = {"server": "<connection>", "method": "tools/call",
# "tool": "<tool>", "arguments": {...}}. AEGIS also evaluates each tool with empty
# arguments to decide whether the agent is shown it at all: a tool this policy
# denies outright is not listed (and cannot be called by name either).
#
#   - listing a server's tools, and read-only tools (read_*, get_*, list_*,
#     search_*, find_*, describe_*), are allowed from trust 300;
#   - destructive tools (delete_*, drop_*) wait for a human's approval;
#   - admin tools (admin_*) are denied below trust 800;
#   - any other tool is allowed from trust 700 and waits for approval below;
#   - plain HTTP actions: reads (GET, HEAD) from trust 300, nothing else.
package aegis

import rego.v1

default decision := "deny"

tool_call if input.mcp.method == "tools/call"

read_only if regex.match(`^(read|get|list|search|find|describe)_`, input.mcp.tool)

destructive if regex.match(`^(delete|drop)_`, input.mcp.tool)

admin if startswith(input.mcp.tool, "admin_")

other_tool if {
	tool_call
	not read_only
	not destructive
	not admin
}

in_good_standing if input.agent.trust >= 300

decision := "allow" if {
	input.mcp.method == "tools/list"
	in_good_standing
}

decision := "allow" if {
	tool_call
	read_only
	in_good_standing
}

decision := "require_approval" if {
	tool_call
	destructive
	in_good_standing
}

decision := "allow" if {
	tool_call
	admin
	input.agent.trust >= 800
}

decision := "allow" if {
	other_tool
	input.agent.trust >= 700
}

decision := "require_approval" if {
	other_tool
	in_good_standing
	input.agent.trust < 700
}

decision := "allow" if {
	not input.mcp
	input.action.method in {"GET", "HEAD"}
	in_good_standing
}

reasons contains "agent trust below 300" if not in_good_standing

reasons contains "destructive tools need approval" if {
	tool_call
	destructive
}

reasons contains "admin tools need trust 800" if {
	tool_call
	admin
	input.agent.trust < 800
}

reasons contains "tools that are not read-only need approval below trust 700" if {
	other_tool
	input.agent.trust < 700
}
