//! Stage `secret`: the named secret is opened only if it is granted to this agent
//! and allowed for the target's scheme, host and port, then injected into the
//! outgoing headers or query (`proxy/secret.rs`). The headers the upstream gets are
//! built here too: the agent's own credentials only if the policy forwards them.
//! Tested over HTTP in `tests/api/proxy.rs` and `exfiltration.rs`.

use std::ops::ControlFlow::{Break, Continue};

use http::HeaderMap;

use super::super::context::{Call, Flow, Stop};
use super::super::egress::Target;
use super::super::{Pipeline, secret, upstream};
use super::policy::Verdict;
use crate::call::Stage;
use crate::secrets::UsableSecret;
use crate::secrets::hosts::Destination;

/// The request as it will leave AEGIS.
pub struct Prepared {
    pub url: url::Url,
    pub headers: HeaderMap,
    /// Zeroed when dropped: dropped as soon as the call no longer needs it.
    pub secret: Option<UsableSecret>,
}

pub fn inject(p: &Pipeline, call: &mut Call<'_>, verdict: &Verdict, target: Target) -> Flow<Prepared> {
    let mut url = target.url.clone();
    let mut headers = upstream::outgoing_headers(&call.request.headers, verdict.forward_credentials);
    let secret = match &call.request.secret {
        None => None,
        Some(name) => {
            let to = Destination { scheme: &target.scheme, host: &target.host, port: target.port };
            match p.secrets.open(verdict.granted_secret.as_ref(), name, &to) {
                Ok(Ok(s)) => Some(s),
                Ok(Err(denied)) => return Break(Stop::deny(Stage::Secret, denied.0)),
                Err(e) => return Break(Stop::Storage(e)),
            }
        }
    };
    if let Some(s) = &secret
        && let Err(reason) = secret::inject(s, &mut headers, &mut url)
    {
        return Break(Stop::deny(Stage::Secret, reason));
    }
    call.record.note("secret", if secret.is_some() { "injected" } else { "none" });
    Continue(Prepared { url, headers, secret })
}
