//! Stage `door`: an MCP server is reached only through `/mcp`. A call from another
//! door (execute, gateway) whose target lies under one of the sponsor's MCP
//! connections is denied at `egress`: raw JSON-RPC there would skip the connection's
//! tool allow-list and the arguments' check. (Gateway mode refuses an MCP connection
//! by name before the pipeline; this covers a URL named directly.)

use std::ops::ControlFlow::{Break, Continue};

use super::super::context::{Call, Flow, Stop};
use crate::call::Stage;
use crate::metering::depth_under;
use crate::store::Route;

pub fn check(call: &mut Call<'_>, routes: &[Route], target: &url::Url) -> Flow<()> {
    if call.request.mcp().is_some() {
        return Continue(());
    }
    match routes.iter().find(|r| r.mcp && depth_under(r, target).is_some()) {
        Some(route) => Break(Stop::deny(
            Stage::Egress,
            format!("{} is the MCP connection {:?}: call its tools through /mcp", route.base_url, route.name),
        )),
        None => Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::mcp::McpCall;
    use crate::call::request::Origin;
    use crate::proxy::context::testing;

    fn routes() -> Vec<Route> {
        let route = |name: &str, base: &str, mcp| Route {
            name: name.into(),
            base_url: base.into(),
            cost_micros: 0,
            pricing: None,
            rate_limits: None,
            mcp,
        };
        // An HTTP twin at the same base URL does not open the MCP server to other doors.
        vec![route("api", "https://tools.example", false), route("notes", "https://tools.example/mcp", true)]
    }

    #[test]
    fn an_mcp_server_is_reached_only_through_its_door() {
        let agent = testing::agent();
        let url = |u: &str| url::Url::parse(u).unwrap();
        for target in
            ["https://tools.example/mcp", "https://tools.example/mcp/x", "https://TOOLS.example:443/mcp"]
        {
            let mut call = Call::new(&agent, testing::request(target), "r".into(), None);
            let stop = check(&mut call, &routes(), &url(target));
            assert!(matches!(stop, Break(Stop::Deny { stage: Stage::Egress, .. })), "{target}");
        }
        for target in
            ["https://tools.example/other", "http://tools.example/mcp", "https://tools.example:8443/mcp"]
        {
            let mut call = Call::new(&agent, testing::request(target), "r".into(), None);
            assert!(check(&mut call, &routes(), &url(target)).is_continue(), "{target}");
        }
        let mut request = testing::request("https://tools.example/mcp");
        request.origin = Origin::Mcp(Box::new(McpCall::list_tools("notes")));
        let mut call = Call::new(&agent, request, "r".into(), None);
        assert!(check(&mut call, &routes(), &url("https://tools.example/mcp")).is_continue(), "through /mcp");
    }
}
