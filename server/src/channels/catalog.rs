//! The event types a channel may subscribe to, and checking a subscription.

use app::error::AppError;

use crate::events::*;

/// Every event type a channel can ask for. `channel.test` is not here: it goes
/// only where `POST /api/channels/{id}/test` sends it.
pub const SUBSCRIBABLE: &[&str] = &[
    APPROVAL_REQUESTED,
    APPROVAL_RESOLVED,
    APPROVAL_EXPIRED,
    BREAKER_TRIPPED,
    BREAKER_RESET,
    BREAKER_HELD,
    BUDGET_ALERT,
    BUDGET_EXHAUSTED,
    TRUST_TIER_CHANGED,
    AGENT_CREATED,
    AGENT_SUSPENDED,
    AGENT_RESUMED,
    AGENT_DELETED,
    PROXY_DENIED,
    ORG_MEMBER_JOINED,
    ORG_MEMBER_REMOVED,
    ORG_MEMBER_ROLE_CHANGED,
    CHANNEL_DISABLED,
];

/// The type of the event a test send delivers.
pub const CHANNEL_TEST: &str = "channel.test";

/// A subscription: at least one known type; duplicates dropped, sorted.
pub fn validate(events: &[String]) -> Result<Vec<String>, AppError> {
    if events.is_empty() {
        return Err(AppError::validation("events: name at least one event type"));
    }
    if let Some(unknown) = events.iter().find(|e| !SUBSCRIBABLE.contains(&e.as_str())) {
        let shown: String = unknown.chars().take(64).collect();
        return Err(AppError::bad_request(
            "unknown_event",
            format!("events: {shown:?} is not an event type; known: {}", SUBSCRIBABLE.join(", ")),
        ));
    }
    let mut events = events.to_vec();
    events.sort();
    events.dedup();
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_known_types_only() {
        assert!(validate(&[]).is_err());
        let e = validate(&["approval.requested".into(), "approval.nope".into()]).unwrap_err();
        assert_eq!(e.code, "unknown_event");
        assert!(validate(&[CHANNEL_TEST.into()]).is_err(), "test events are not subscribable");
        let ok =
            validate(&["budget.alert".into(), "approval.requested".into(), "budget.alert".into()]).unwrap();
        assert_eq!(ok, ["approval.requested", "budget.alert"]);
    }
}
