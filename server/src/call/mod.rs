//! An agent's call as AEGIS understands it: the request ([`request`]), the names
//! of the stages that can stop it ([`Stage`]), what the upstream answered
//! ([`upstream`]) and what the call came to ([`outcome`]). A leaf:
//! the pipeline (`proxy`), the approvals that park a call and the trust that a
//! denial moves all read it, and it reads none of them.

pub mod mcp;
pub mod outcome;
pub mod request;
pub mod stage;
pub mod upstream;

pub use stage::Stage;
