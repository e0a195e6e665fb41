//! Stage `breaker`: an agent whose circuit is open is refused before anything else
//! is looked at; a half-open circuit lets exactly one call through as its probe
//! (the breaker itself: `proxy/breaker/`). Tested over HTTP in `tests/api/breaker.rs`.

use std::ops::ControlFlow::{Break, Continue};

use super::super::Pipeline;
use super::super::breaker::Admission;
use super::super::context::{Call, Flow, Stop};
use crate::call::Stage;

pub async fn admit(p: &Pipeline, call: &mut Call<'_>) -> Flow<()> {
    match p.breaker.admit(&call.agent.agent).await {
        Ok(Ok(admission)) => call.admission = admission,
        Ok(Err(reason)) => return Break(Stop::deny(Stage::Breaker, reason)),
        Err(e) => return Break(Stop::Storage(e)),
    }
    call.record.note("breaker", if call.admission == Admission::Probe { "probe" } else { "pass" });
    Continue(())
}
