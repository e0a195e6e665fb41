# AEGIS permissive policy: every action is allowed by policy. Egress checks,
# secret grants, budgets and the circuit breaker still apply.
package aegis

import rego.v1

decision := "allow"

reasons contains "permissive policy"
