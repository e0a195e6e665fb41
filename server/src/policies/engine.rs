//! Rego evaluation with `regorus`, embedded: no OPA server.
//!
//! A policy is Rego in `package aegis` that defines `decision` ("allow", "deny" or
//! "require_approval") and optionally `reasons` (a set or array of strings). Anything
//! else — a compile error, an evaluation error, a time-out, an undefined or unknown
//! decision — is a deny: the engine fails closed.
//!
//! Compiled policies are cached by the SHA-256 of their source, so a changed policy
//! (a new version) is compiled once on first use and the old one simply ages out.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Once, RwLock};
use std::time::Duration;

use regorus::{CompiledPolicy, Engine, Value};
use serde::{Deserialize, Serialize};

use crate::storage::{canonical_json, sha256_hex};

/// Longest a single evaluation may run before it is cut off (and denied). It is
/// wall-clock time: an ordinary policy takes well under a millisecond, and the
/// margin keeps a CPU-starved host (seen at 50 ms) from denying ordinary calls
/// while a runaway policy is still stopped quickly.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);
const CACHE_LIMIT: usize = 1024;

/// Wraps the sponsor's policy so one compiled entry point yields both outputs, and a
/// missing `reasons` rule is an empty set rather than an undefined result.
const ENTRY_MODULE: &str = r#"package aegis_entry
import rego.v1

default reasons := []

reasons := [r | some r in data.aegis.reasons]

default forward_credentials := false

forward_credentials := data.aegis.forward_credentials

result := {"decision": data.aegis.decision, "reasons": reasons, "forward_credentials": forward_credentials}
"#;
const ENTRY_RULE: &str = "data.aegis_entry.result";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    RequireApproval,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::RequireApproval => "require_approval",
        }
    }
}

/// The outcome of one evaluation, with what is needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    pub decision: Decision,
    pub reasons: Vec<String>,
    /// SHA-256 of the exact policy source used.
    pub policy_sha256: String,
    /// SHA-256 of the canonical JSON of the input.
    pub input_sha256: String,
    /// The policy lets the agent's own `Authorization`/`Cookie` headers through
    /// (`forward_credentials := true`); they are dropped otherwise.
    pub forward_credentials: bool,
    /// Why the engine denied on its own (compile error, time-out, bad output).
    pub error: Option<String>,
}

#[derive(Default)]
pub struct PolicyEngine {
    compiled: RwLock<HashMap<String, Arc<CompiledPolicy>>>,
}

fn install_time_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        regorus::utils::limits::set_fallback_execution_timer_config(Some(
            regorus::utils::limits::ExecutionTimerConfig {
                limit: EVAL_TIME_LIMIT,
                check_interval: NonZeroU32::new(32).expect("non-zero"),
            },
        ));
    });
}

/// Compiles `source`; the error is the compiler's message, fit to show the author.
pub fn compile(source: &str) -> Result<CompiledPolicy, String> {
    install_time_limit();
    let mut engine = Engine::new();
    engine.add_policy("policy.rego".into(), source.to_owned()).map_err(|e| e.to_string())?;
    let packages = engine.get_packages().map_err(|e| e.to_string())?;
    if !packages.iter().any(|p| p == "data.aegis") {
        return Err("the policy must be in `package aegis`".into());
    }
    // Evaluating a rule that does not exist is an error; one that exists but is
    // undefined for this input is fine.
    engine.set_input(Value::new_object());
    engine
        .eval_rule("data.aegis.decision".into())
        .map_err(|e| format!("the policy must define `decision`: {e}"))?;
    engine.add_policy("aegis_entry.rego".into(), ENTRY_MODULE.to_owned()).map_err(|e| e.to_string())?;
    engine.compile_with_entrypoint(&ENTRY_RULE.into()).map_err(|e| e.to_string())
}

impl PolicyEngine {
    pub fn new() -> Self {
        install_time_limit();
        Self::default()
    }

    fn compiled(&self, sha: &str, source: &str) -> Result<Arc<CompiledPolicy>, String> {
        if let Some(c) = self.compiled.read().unwrap_or_else(|e| e.into_inner()).get(sha) {
            return Ok(c.clone());
        }
        let compiled = Arc::new(compile(source)?);
        let mut cache = self.compiled.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(sha.to_owned(), compiled.clone());
        Ok(compiled)
    }

    /// Evaluates `source` against `input`. Never fails: every problem is a deny with
    /// the problem in `error`.
    pub fn evaluate(&self, source: &str, input: &serde_json::Value) -> Evaluation {
        self.evaluate_canonical(source, &canonical_json(input))
    }

    /// [`Self::evaluate`] with the input already in canonical JSON: the proxy keeps
    /// that text for the audit record too, so it is made once per request.
    pub fn evaluate_canonical(&self, source: &str, canonical: &str) -> Evaluation {
        let policy_sha256 = sha256_hex(source.as_bytes());
        let input_sha256 = sha256_hex(canonical.as_bytes());
        let deny = |error: String| Evaluation {
            decision: Decision::Deny,
            reasons: vec![],
            policy_sha256: policy_sha256.clone(),
            input_sha256: input_sha256.clone(),
            forward_credentials: false,
            error: Some(error),
        };
        let compiled = match self.compiled(&policy_sha256, source) {
            Ok(c) => c,
            Err(e) => return deny(format!("policy does not compile: {e}")),
        };
        let input = match Value::from_json_str(canonical) {
            Ok(v) => v,
            Err(e) => return deny(format!("policy input: {e}")),
        };
        let result = match compiled.eval_with_input(input) {
            Ok(v) => v,
            Err(e) => return deny(format!("policy evaluation failed: {e}")),
        };
        let output: serde_json::Value = match result.to_json_str().map(|s| serde_json::from_str(&s)) {
            Ok(Ok(v)) => v,
            _ => return deny("policy produced no decision".into()),
        };
        let decision = match output.get("decision").and_then(|d| d.as_str()) {
            Some("allow") => Decision::Allow,
            Some("deny") => Decision::Deny,
            Some("require_approval") => Decision::RequireApproval,
            Some(other) => return deny(format!("unknown decision {other:?}")),
            None => return deny("policy produced no decision".into()),
        };
        let mut reasons: Vec<String> = output
            .get("reasons")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        reasons.sort();
        let forward_credentials = output.get("forward_credentials") == Some(&serde_json::Value::Bool(true));
        Evaluation { decision, reasons, policy_sha256, input_sha256, forward_credentials, error: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULT: &str = include_str!("../../../policies/default.rego");
    const PERMISSIVE: &str = include_str!("../../../policies/permissive.rego");

    fn input(method: &str, trust: i64, cost: i64) -> serde_json::Value {
        json!({
            "agent": {"id": "a", "name": "bot", "trust": trust, "tags": [], "sponsor": "s"},
            "action": {"method": method, "url": "https://api.example.com/x", "scheme": "https",
                       "host": "api.example.com", "port": 443, "path": "/x", "query": "",
                       "headers": [], "cost_micros": cost, "label": null, "secret": null},
            "wallet": {"daily_spent_micros": 0, "daily_limit_micros": 0, "monthly_spent_micros": 0, "monthly_limit_micros": 0},
            "time": {"now": "2026-11-26T12:00:00Z", "weekday": "Thursday", "hour": 12}
        })
    }

    #[test]
    fn shipped_policies_compile() {
        compile(DEFAULT).unwrap();
        compile(PERMISSIVE).unwrap();
    }

    #[test]
    fn permissive_allows_everything() {
        let e = PolicyEngine::new().evaluate(PERMISSIVE, &input("DELETE", 0, 10_000_000_000));
        assert_eq!(e.decision, Decision::Allow, "{e:?}");
        assert_eq!(e.reasons, vec!["permissive policy"]);
    }

    #[test]
    fn compile_errors_are_explained() {
        assert!(compile("package aegis\ndecision := ").unwrap_err().len() > 5);
        assert!(compile("package other\ndecision := \"allow\"").unwrap_err().contains("package aegis"));
        assert!(compile("package aegis\nimport rego.v1\nfoo := 1").unwrap_err().contains("decision"));
    }

    #[test]
    fn fails_closed() {
        let engine = PolicyEngine::new();
        let cases = [
            ("syntax error", "package aegis\ndecision := ("),
            ("undefined decision", "package aegis\nimport rego.v1\ndecision := \"allow\" if input.never"),
            ("unknown decision", "package aegis\ndecision := \"maybe\""),
            ("wrong type", "package aegis\ndecision := 42"),
            (
                "conflicting values",
                "package aegis\nimport rego.v1\ndecision := \"allow\" if true\ndecision := \"deny\" if true",
            ),
        ];
        for (name, source) in cases {
            let e = engine.evaluate(source, &input("GET", 500, 0));
            assert_eq!(e.decision, Decision::Deny, "{name}: {e:?}");
            assert!(e.error.is_some(), "{name}");
        }
    }

    #[test]
    fn runaway_policies_are_cut_off_and_denied() {
        let slow = r#"package aegis
import rego.v1
decision := "allow" if {
    count([x | some a in numbers.range(1, 3000); some b in numbers.range(1, 3000); x := a * b]) > 0
}"#;
        let started = std::time::Instant::now();
        let e = PolicyEngine::new().evaluate(slow, &input("GET", 500, 0));
        assert_eq!(e.decision, Decision::Deny, "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "cut off, took {:?}", started.elapsed());
    }

    #[test]
    fn evaluation_is_deterministic_and_digests_identify_it() {
        let engine = PolicyEngine::new();
        let a = engine.evaluate(DEFAULT, &input("GET", 500, 0));
        let b = engine.evaluate(DEFAULT, &input("GET", 500, 0));
        assert_eq!(a, b);
        let c = engine.evaluate(DEFAULT, &input("GET", 501, 0));
        assert_ne!(a.input_sha256, c.input_sha256);
        assert_eq!(a.policy_sha256, sha256_hex(DEFAULT.as_bytes()));
    }
}
