//! Stage `egress`: the target must pass the egress guard (`proxy/egress/`: schemes,
//! ports, private and cloud-platform addresses in every spelling) and so must every
//! address its name resolves to; the client later connects only to those. Tested
//! in `proxy/egress/tests.rs` and over HTTP in `tests/api/proxy.rs`.

use std::ops::ControlFlow::{Break, Continue};

use super::super::Pipeline;
use super::super::context::{Call, Flow, Stop};
use super::super::egress::Target;
use crate::call::Stage;

pub async fn check(p: &Pipeline, call: &mut Call<'_>) -> Flow<Target> {
    let target = match p.egress.check_url(&call.request.url) {
        Ok(t) => t,
        Err(d) => return Break(Stop::deny(Stage::Egress, d.reason)),
    };
    if let Err(d) = p.egress.resolve(&target).await {
        return Break(Stop::deny(Stage::Egress, d.reason));
    }
    call.record.note("egress", "pass");
    Continue(target)
}
