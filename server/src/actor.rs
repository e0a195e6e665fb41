//! [`Actor`]: who does something to an organization's data, after the role check.
//! A leaf module: the domain services take an `Actor` to scope their work and to
//! name the member in the audit log, without depending on [`crate::orgs`].

use app::error::AppError;
use app::model::{Access, Role, SessionUser};
use uuid::Uuid;

/// A member acting in an organization, after the role check: what domain code is
/// given to scope its work and to name who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub org: Uuid,
    pub member: Uuid,
    pub role: Role,
}

impl Actor {
    /// The member, if their role allows `access` ([`SessionUser::scope`]).
    pub fn new(sponsor: &SessionUser, access: Access) -> Result<Self, AppError> {
        Ok(Self { org: sponsor.scope(access)?, member: sponsor.user_id, role: sponsor.role() })
    }

    /// `{"member": id, "role": role}`: who did something, as audit records name them.
    pub fn audit_json(&self) -> serde_json::Value {
        serde_json::json!({"member": self.member, "role": self.role.as_str()})
    }
}
