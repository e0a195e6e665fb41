//! Before policy can look at the target it must at least parse; a URL that does
//! not is refused at stage `egress`. The audit keeps the host as egress and policy
//! judge it (lower case, no trailing dot, IDNA) and the path.

use std::ops::ControlFlow::{Break, Continue};

use super::super::context::{Call, Flow, Stop};
use super::super::policy::normalised_host;
use crate::call::Stage;

pub fn parse(call: &mut Call<'_>) -> Flow<url::Url> {
    let parsed = match url::Url::parse(&call.request.url) {
        Ok(u) => u,
        Err(e) => return Break(Stop::deny(Stage::Egress, format!("malformed target URL: {e}"))),
    };
    call.host = parsed.host_str().map(|_| normalised_host(&parsed));
    call.path = Some(parsed.path().to_owned());
    Continue(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::context::testing;

    #[test]
    fn the_audited_host_is_the_one_egress_and_policy_judge() {
        let agent = testing::agent();
        let mut call =
            Call::new(&agent, testing::request("https://API.Example.COM./v1/x?q=1"), "req_t".into(), None);
        let Continue(url) = parse(&mut call) else { panic!("a valid URL goes on") };
        assert_eq!(url.path(), "/v1/x");
        assert_eq!(call.host.as_deref(), Some("api.example.com"));
        assert_eq!(call.path.as_deref(), Some("/v1/x"));
    }

    #[test]
    fn a_target_that_does_not_parse_is_refused_at_egress() {
        let agent = testing::agent();
        let mut call = Call::new(&agent, testing::request("http://exa mple.com/"), "req_t".into(), None);
        match parse(&mut call) {
            Break(Stop::Deny { stage: Stage::Egress, reason, .. }) => {
                assert!(reason.starts_with("malformed target URL"), "{reason}")
            }
            other => panic!("expected an egress denial, got {other:?}"),
        }
        assert_eq!(call.host, None);
    }
}
