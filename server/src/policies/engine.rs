//! Rego evaluation with `regorus`, embedded: no OPA server.
//!
//! A policy is Rego in `package aegis` that defines `decision` ("allow", "deny" or
//! "require_approval") and optionally `reasons` (a set or array of strings). Anything
//! else — a compile error, an evaluation error, a time-out, an undefined or unknown
//! decision — is a deny: the engine fails closed.
//!
//! Compiled policies are cached by their source text (with its SHA-256, computed
//! once), so a changed policy (a new version) is compiled once on first use and
//! the old one simply ages out.
//!
//! A compiled policy is also compiled to a program for regorus' virtual machine
//! (RVM), which evaluates the shipped policies about eight times faster than the
//! tree-walking interpreter. Policies the RVM compiler does not take yet (the `with`
//! keyword, some partial objects) run on the interpreter; both give the same
//! answers (tested on the shipped policies over a grid of inputs), and both fail
//! closed the same way.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Once, RwLock};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::{CompiledPolicy, Engine, Value};
use serde::{Deserialize, Serialize};

use crate::storage::sha256_hex;

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
    /// SHA-256 of the exact policy source used. (The input itself is kept whole
    /// in the audit record, whose hash covers it.)
    pub policy_sha256: String,
    /// The policy lets the agent's own `Authorization`/`Cookie` headers through
    /// (`forward_credentials := true`); they are dropped otherwise.
    pub forward_credentials: bool,
    /// Why the engine denied on its own (compile error, time-out, bad output).
    pub error: Option<String>,
}

#[derive(Default)]
pub struct PolicyEngine {
    compiled: RwLock<HashMap<String, Arc<Compiled>>>,
}

/// Idle VMs kept per program: about one per concurrently evaluating thread.
const IDLE_VMS: usize = 16;

/// One policy, ready to evaluate.
pub struct Compiled {
    /// Of the source, hex.
    pub sha256: String,
    policy: CompiledPolicy,
    /// The RVM program, when the RVM compiler takes the policy.
    program: Option<Arc<Program>>,
    /// VMs with the program loaded, reused: loading costs about as much as a run.
    idle: Mutex<Vec<RegoVM>>,
}

impl Compiled {
    pub fn new(source: &str, policy: CompiledPolicy) -> Self {
        let program = match Compiler::compile_from_policy(&policy, &[ENTRY_RULE]) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "policy runs on the interpreter (the RVM compiler does not take it)");
                None
            }
        };
        Self { sha256: sha256_hex(source.as_bytes()), policy, program, idle: Mutex::new(Vec::new()) }
    }

    /// Whether evaluations run on the RVM (false: on the interpreter).
    pub fn on_vm(&self) -> bool {
        self.program.is_some()
    }

    pub fn eval(&self, input: Value) -> Result<Value, String> {
        let Some(program) = &self.program else { return self.eval_on_interpreter(input) };
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut vm = reused.unwrap_or_else(|| {
            let mut vm = RegoVM::new();
            vm.load_program(program.clone());
            // The wall-clock limit ([`EVAL_TIME_LIMIT`]) bounds a run, as on the
            // interpreter; the VM's own default cap of 25,000 instructions would deny
            // long but legitimate policies (a big allow-list) that the interpreter allows.
            vm.set_max_instructions(usize::MAX);
            vm
        });
        vm.set_input(input);
        let result = vm.execute().map_err(|e| e.to_string());
        // A VM whose run failed (a time-out, an error) is dropped, never reused.
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_VMS {
                idle.push(vm);
            }
        }
        result
    }

    /// The interpreter's answer, whatever the policy runs on (for the tests that
    /// hold the two to the same answers).
    pub fn eval_on_interpreter(&self, input: Value) -> Result<Value, String> {
        self.policy.eval_with_input(input).map_err(|e| e.to_string())
    }
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

    fn compiled(&self, source: &str) -> Result<Arc<Compiled>, String> {
        if let Some(c) = self.compiled.read().unwrap_or_else(|e| e.into_inner()).get(source) {
            return Ok(c.clone());
        }
        let compiled = Arc::new(Compiled::new(source, compile(source)?));
        let mut cache = self.compiled.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(source.to_owned(), compiled.clone());
        Ok(compiled)
    }

    /// Evaluates `source` against `input`. Never fails: every problem is a deny with
    /// the problem in `error`.
    pub fn evaluate(&self, source: &str, input: &serde_json::Value) -> Evaluation {
        self.evaluate_value(source, input.clone())
    }

    /// [`Self::evaluate`], taking the input: it goes to the engine as a value,
    /// never re-parsed from JSON text.
    pub fn evaluate_value(&self, source: &str, input: serde_json::Value) -> Evaluation {
        let deny = |policy_sha256: String, error: String| Evaluation {
            decision: Decision::Deny,
            reasons: vec![],
            policy_sha256,
            forward_credentials: false,
            error: Some(error),
        };
        let compiled = match self.compiled(source) {
            Ok(c) => c,
            Err(e) => return deny(sha256_hex(source.as_bytes()), format!("policy does not compile: {e}")),
        };
        let policy_sha256 = compiled.sha256.clone();
        match verdict(compiled.eval(Value::from(input))) {
            Ok(Verdict { decision, reasons, forward_credentials }) => {
                Evaluation { decision, reasons, policy_sha256, forward_credentials, error: None }
            }
            Err(error) => deny(policy_sha256, error),
        }
    }
}

/// What a policy's output says, read from the entry rule's result object.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// Sorted.
    pub reasons: Vec<String>,
    pub forward_credentials: bool,
}

/// Reads an evaluation's output; `Err` (a deny) for a failed evaluation, a missing,
/// mistyped or unknown decision.
pub fn verdict(output: Result<Value, String>) -> Result<Verdict, String> {
    let output = output.map_err(|e| format!("policy evaluation failed: {e}"))?;
    let decision = match output["decision"].as_string().map(|d| d.as_ref()) {
        Ok("allow") => Decision::Allow,
        Ok("deny") => Decision::Deny,
        Ok("require_approval") => Decision::RequireApproval,
        Ok(other) => return Err(format!("unknown decision {other:?}")),
        Err(_) => return Err("policy produced no decision".into()),
    };
    let mut reasons: Vec<String> = match output["reasons"].as_array() {
        Ok(r) => r.iter().filter_map(|v| v.as_string().ok().map(|s| s.to_string())).collect(),
        Err(_) => Vec::new(),
    };
    reasons.sort();
    let forward_credentials = output["forward_credentials"] == Value::from(true);
    Ok(Verdict { decision, reasons, forward_credentials })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::canonical_json;
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
        assert_eq!(a.policy_sha256, sha256_hex(DEFAULT.as_bytes()));
        let c = engine.evaluate(PERMISSIVE, &input("GET", 500, 0));
        assert_eq!(c.policy_sha256, sha256_hex(PERMISSIVE.as_bytes()));
        // A policy that does not compile is still identified.
        let broken = "package aegis\ndecision := (";
        assert_eq!(
            engine.evaluate(broken, &input("GET", 500, 0)).policy_sha256,
            sha256_hex(broken.as_bytes())
        );
    }

    /// Policies that exercise what sponsors write: sets, comprehensions, `every`,
    /// string and glob builtins, `forward_credentials`, partial sets of reasons.
    /// The first one's `decision` conflicts (allow and require_approval) for tagged,
    /// costly calls: an error, i.e. a deny, on both.
    const EXTRA: &[&str] = &[
        r#"package aegis
import rego.v1
default decision := "deny"
decision := "allow" if {
    some tag in input.agent.tags
    startswith(tag, "prod")
    glob.match("api.*.com", ["."], input.action.host)
}
decision := "require_approval" if input.action.cost_micros > 5000
reasons contains sprintf("cost %d", [input.action.cost_micros]) if input.action.cost_micros > 0
reasons contains "tagged" if count(input.agent.tags) > 0
forward_credentials if input.action.method == "GET"
"#,
        r#"package aegis
import rego.v1
limits := {"GET": 700, "POST": 300}
decision := "allow" if {
    every h in input.action.headers { not startswith(h, "x-forbidden") }
    input.agent.trust >= object.get(limits, input.action.method, 1000)
} else := "deny"
reasons := [r | some m, l in limits; m == input.action.method; r := sprintf("%s needs %d", [m, l])]
"#,
    ];

    fn grid() -> Vec<serde_json::Value> {
        let mut inputs = Vec::new();
        for method in ["GET", "HEAD", "POST", "DELETE"] {
            for trust in [0, 299, 300, 500, 699, 700, 1000] {
                for cost in [0, 1, 1_000_000, 1_000_001, 10_000_000_000] {
                    for tags in [json!([]), json!(["prod-eu", "x"])] {
                        let mut i = input(method, trust, cost);
                        i["agent"]["tags"] = tags;
                        i["action"]["headers"] = json!(["accept", "x-forbidden-thing"]);
                        inputs.push(i);
                    }
                }
            }
        }
        inputs
    }

    #[test]
    fn the_vm_and_the_interpreter_give_the_same_answers() {
        let inputs = grid();
        for source in [DEFAULT, PERMISSIVE].iter().chain(EXTRA) {
            let compiled = Compiled::new(source, compile(source).unwrap());
            assert!(compiled.on_vm(), "the RVM compiler should take {source}");
            // Run the grid twice so every run but the first reuses a VM. Where the
            // interpreter raises an error (conflicting rule values), the VM may
            // answer "undefined" instead: both are the same deny.
            let mut decided = 0;
            for round in 0..2 {
                for i in &inputs {
                    let vm = verdict(compiled.eval(Value::from(i.clone())));
                    let interpreted = verdict(compiled.eval_on_interpreter(Value::from(i.clone())));
                    assert_eq!(
                        vm.is_ok(),
                        interpreted.is_ok(),
                        "round {round}, input {i}, policy {source}: {vm:?} / {interpreted:?}"
                    );
                    if let (Ok(vm), Ok(interpreted)) = (vm, interpreted) {
                        assert_eq!(vm, interpreted, "round {round}, input {i}, policy {source}");
                        decided += 1;
                    }
                }
            }
            assert!(decided > inputs.len(), "most of the grid decides: {decided} for {source}");
        }
    }

    #[test]
    fn long_but_legitimate_policies_are_not_cut_short_on_the_vm() {
        // Over the VM's default cap of 25,000 instructions (seen: 3,500 elements
        // already exceed it), yet milliseconds of work.
        let long = r#"package aegis
import rego.v1
decision := "allow" if count([x | some x in numbers.range(1, 4000); x % 7 != 0]) > 3000
"#;
        let compiled = Compiled::new(long, compile(long).unwrap());
        assert!(compiled.on_vm());
        let e = PolicyEngine::new().evaluate(long, &input("GET", 500, 0));
        assert_eq!((e.decision, e.error), (Decision::Allow, None));
    }

    #[test]
    fn policies_the_vm_cannot_take_run_on_the_interpreter() {
        let with = r#"package aegis
import rego.v1
decision := "allow" if { count(input.agent.tags) == 2 with input.agent.tags as ["a", "b"] }
"#;
        let compiled = Compiled::new(with, compile(with).unwrap());
        assert!(!compiled.on_vm(), "`with` is not in the RVM compiler yet");
        let e = PolicyEngine::new().evaluate(with, &input("GET", 0, 0));
        assert_eq!((e.decision, e.error), (Decision::Allow, None));
    }

    #[test]
    fn the_input_value_is_the_parsed_canonical_text() {
        for i in grid().iter().take(40) {
            let parsed = Value::from_json_str(&canonical_json(i)).unwrap();
            assert_eq!(Value::from(i.clone()), parsed, "{i}");
        }
    }
}
