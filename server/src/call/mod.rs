//! An agent's call as AEGIS understands it, before any stage runs: the request
//! ([`request`]) and the names of the stages that can stop it ([`Stage`]). A leaf:
//! the pipeline (`proxy`), the approvals that park a call and the trust that a
//! denial moves all read it, and it reads none of them.

pub mod request;
pub mod stage;

pub use stage::{Stage, interrupted_answer};
