//! Stage `arguments`: an MCP tool call's arguments are checked against the tool's
//! `inputSchema` before the policy sees them ([`crate::call::mcp::McpCall::check_arguments`];
//! a schema AEGIS cannot compile fails closed). Calls from the other doors pass untouched.
//! Tested over a real MCP client in `tests/api/mcp.rs`.

use std::ops::ControlFlow::{Break, Continue};

use super::super::context::{Call, Flow, Stop};
use crate::call::Stage;

pub fn check(call: &mut Call<'_>) -> Flow<()> {
    let Some(mcp) = call.request.mcp() else { return Continue(()) };
    match mcp.check_arguments() {
        Ok(()) => {
            call.record.note("arguments", "match the inputSchema");
            Continue(())
        }
        Err(why) => Break(Stop::deny(Stage::Arguments, why)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::call::mcp::McpCall;
    use crate::call::request::Origin;
    use crate::proxy::context::testing;

    #[test]
    fn a_call_with_arguments_off_schema_stops_here() {
        let agent = testing::agent();
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        let mut request = testing::request("https://mcp.example/mcp");
        request.origin = Origin::Mcp(Box::new(McpCall::call_tool("s", "t", json!({"n": "x"}), Some(schema))));
        let mut call = Call::new(&agent, request.clone(), "req_1".into(), None);
        match check(&mut call) {
            Break(Stop::Deny { stage: Stage::Arguments, reason, .. }) => {
                assert!(reason.contains("/n"), "{reason}")
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        if let Origin::Mcp(m) = &mut request.origin {
            m.arguments = json!({"n": 1});
        }
        let mut call = Call::new(&agent, request, "req_2".into(), None);
        assert!(check(&mut call).is_continue());
        let mut plain = Call::new(&agent, testing::request("https://x.example/"), "req_3".into(), None);
        assert!(check(&mut plain).is_continue());
        assert!(plain.record.stages.is_empty(), "other doors are not noted");
    }
}
