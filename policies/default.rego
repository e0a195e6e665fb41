# AEGIS default policy (production default).
#
# Input: see README "Policy input". Output: `decision` in {"allow", "deny",
# "require_approval"} and `reasons`, a set of strings explaining it.
package aegis

import rego.v1

default decision := "deny"

# Reads: GET and HEAD, and the listing of an MCP server's tools (which AEGIS does to
# show an agent the tools it may call). An MCP tool call is a write: what a tool does
# is the server's business, so it needs trust like any write.
reads if input.action.method in {"GET", "HEAD"}

reads if input.mcp.method == "tools/list"

# Reads are allowed for agents in good standing.
decision := "allow" if {
	reads
	input.agent.trust >= 300
	not needs_approval
}

# Writes from trusted agents are allowed; everything risky waits for a human.
decision := "allow" if {
	not reads
	input.agent.trust >= 700
	not needs_approval
}

decision := "require_approval" if needs_approval

decision := "require_approval" if {
	not reads
	input.agent.trust >= 300
	input.agent.trust < 700
}

needs_approval if input.action.cost_micros > 1000000

reasons contains "agent trust below 300" if input.agent.trust < 300

reasons contains "cost above 1.00 needs approval" if needs_approval

reasons contains "writes need approval below trust 700" if {
	not reads
	input.agent.trust >= 300
	input.agent.trust < 700
}
