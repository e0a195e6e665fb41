//! The simulated workload's script: a pure function from a tick number (one tick
//! every [`TICK`]) to the call made at that tick, so its shape — every kind of
//! outcome within the first minute, who trips the breaker and who must not — is
//! unit-tested without a server.

use std::time::Duration;

/// One call per tick: two requests per second.
pub const TICK: Duration = Duration::from_millis(500);

/// The demo's agents. Each has its own policy and limits (see [`super::setup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads through execute and gateway mode under the `read-only` policy.
    Researcher,
    /// Reads freely; its writes wait for a human under the `default` policy.
    Writer,
    /// Permissive policy but a daily budget of 1.00 that a few calls exhaust.
    Shopper,
    /// Probes the cloud metadata endpoint and storms the API with deletes.
    Rogue,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Researcher, Role::Writer, Role::Shopper, Role::Rogue];

    pub fn agent_name(self) -> &'static str {
        match self {
            Role::Researcher => "research-assistant",
            Role::Writer => "report-writer",
            Role::Shopper => "tight-budget-buyer",
            Role::Rogue => "rogue-scraper",
        }
    }
}

/// Which door of the proxy a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `POST /api/proxy/execute` with a JSON description of the call.
    Execute,
    /// `/api/gw/{connection}/…`, as an unmodified SDK would call it.
    Gateway,
}

/// What the script means a call to show (the server decides; this is for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    Allow,
    PolicyDeny,
    EgressDeny,
    Approval,
    /// Allowed until the daily budget runs out, refused at stage `budget` after.
    Spend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub role: Role,
    pub door: Door,
    pub method: &'static str,
    /// A path on the mock upstream (under its `/ok`), or an absolute URL.
    pub target: String,
    pub cost_micros: i64,
    pub intent: Intent,
}

/// The rogue agent's denial storm: ticks `STORM` within every `STORM_EVERY`.
const STORM_EVERY: u64 = 600;
const STORM: std::ops::Range<u64> = 8..20;
/// The cloud metadata address: refused by the egress guard whatever the allow list says.
pub const METADATA_URL: &str = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
/// What one of the shopper's calls costs: its 1.00 daily budget covers three.
pub const SHOPPER_COST_MICROS: i64 = 300_000;
const RESEARCHER_COST_MICROS: i64 = 500;

fn call(role: Role, door: Door, method: &'static str, target: String, cost: i64, intent: Intent) -> Call {
    Call { role, door, method, target, cost_micros: cost, intent }
}

/// The call made at `tick`.
pub fn step(tick: u64) -> Call {
    use Door::*;
    use Intent::*;
    use Role::*;
    let n = tick / 4;
    if STORM.contains(&(tick % STORM_EVERY)) {
        call(Rogue, Execute, "DELETE", format!("/records/{tick}"), 0, PolicyDeny)
    } else if tick % 120 == 3 {
        call(Rogue, Execute, "GET", METADATA_URL.to_owned(), 0, EgressDeny)
    } else if tick % 120 == 6 {
        call(Writer, Execute, "POST", format!("/reports/{}", tick / 120), 0, Approval)
    } else if tick % 1200 == 5 {
        call(Researcher, Execute, "POST", "/papers".to_owned(), 0, PolicyDeny)
    } else if tick % 20 == 1 {
        call(Shopper, Execute, "GET", format!("/quotes/{n}"), SHOPPER_COST_MICROS, Spend)
    } else if tick % 20 == 10 {
        call(Rogue, Execute, "GET", format!("/records?page={n}"), 0, Allow)
    } else {
        match tick % 4 {
            0 => call(Researcher, Execute, "GET", format!("/papers?page={n}"), RESEARCHER_COST_MICROS, Allow),
            1 => call(Researcher, Gateway, "GET", format!("/papers/{n}"), 0, Allow),
            2 => call(Writer, Execute, "GET", format!("/drafts/{n}"), 0, Allow),
            _ => call(Writer, Gateway, "GET", format!("/sources/{n}"), 0, Allow),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The breaker's defaults: at least 10 calls in 60 s, half of them denied.
    const WINDOW_TICKS: u64 = 120;
    const MIN_SAMPLES: usize = 10;

    fn window(from: u64) -> Vec<Call> {
        (from..from + WINDOW_TICKS).map(step).collect()
    }

    #[test]
    fn the_first_minute_shows_every_kind_of_outcome() {
        let intents: HashSet<Intent> = window(0).iter().map(|c| c.intent).collect();
        for i in [Intent::Allow, Intent::PolicyDeny, Intent::EgressDeny, Intent::Approval, Intent::Spend] {
            assert!(intents.contains(&i), "{i:?} missing from the first minute");
        }
        let doors: HashSet<_> = window(0).iter().map(|c| format!("{:?}", c.door)).collect();
        assert_eq!(doors.len(), 2, "both execute and gateway mode are exercised");
        // The storm and the metadata probe come early, so the breaker trips within seconds.
        let rogue_denials = (0..24).map(step).filter(|c| c.role == Role::Rogue && c.intent != Intent::Allow);
        assert!(rogue_denials.count() >= MIN_SAMPLES);
    }

    #[test]
    fn only_the_rogue_can_trip_its_breaker() {
        // Over an hour of sliding windows, no well-behaved agent makes ten calls with
        // half of them denied; the shopper (refused once its budget is gone) never
        // makes ten calls in a window at all.
        for from in (0..7200).step_by(10) {
            let calls = window(from);
            for role in [Role::Researcher, Role::Writer, Role::Shopper] {
                let mine: Vec<_> = calls.iter().filter(|c| c.role == role).collect();
                let denied = mine
                    .iter()
                    .filter(|c| matches!(c.intent, Intent::PolicyDeny | Intent::EgressDeny | Intent::Spend))
                    .count();
                assert!(
                    mine.len() < MIN_SAMPLES || denied * 2 < mine.len(),
                    "{role:?} could trip at tick {from}: {denied} of {}",
                    mine.len()
                );
            }
        }
        let storm = window(0).into_iter().filter(|c| c.role == Role::Rogue && c.intent == Intent::PolicyDeny);
        assert!(storm.count() >= MIN_SAMPLES, "the storm alone fills the breaker's sample");
    }

    #[test]
    fn approvals_are_asked_for_about_once_a_minute() {
        let asked = (0..1200).map(step).filter(|c| c.intent == Intent::Approval).count();
        assert_eq!(asked, 10);
    }

    #[test]
    fn the_metadata_probe_is_the_only_call_off_the_mock() {
        for call in (0..1200).map(step) {
            assert_eq!(call.target.starts_with("http"), call.intent == Intent::EgressDeny, "{call:?}");
        }
    }
}
