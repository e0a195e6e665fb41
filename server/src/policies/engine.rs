//! Rego evaluation with `regorus`, embedded: no OPA server.
//!
//! A policy is Rego in `package aegis` that defines `decision` ("allow", "deny" or
//! "require_approval") and optionally `reasons` (a set or array of strings). Anything
//! else — a compile error, an evaluation error, a time-out, an undefined or unknown
//! decision — is a deny: the engine fails closed.
//!
//! Compiled policies are cached by their source text (with its SHA-256, computed
//! once) in a least-recently-used cache: a changed policy (a new version) is
//! compiled once on first use — concurrent first calls wait for that one compile
//! (single flight) — and the old one ages out. Dry runs never enter the cache.
//!
//! A compiled policy is also compiled to a program for regorus' virtual machine
//! (RVM), which evaluates the shipped policies about eight times faster than the
//! tree-walking interpreter. Policies the RVM compiler does not take yet (the `with`
//! keyword, some partial objects) run on the interpreter; both give the same
//! answers (tested on the shipped policies over a grid of inputs), and both fail
//! closed the same way.
//!
//! # Limits (a sponsor's Rego is untrusted code)
//!
//! * **Before anything runs**, [`vet`] walks the policy's syntax tree: builtins that
//!   allocate or loop in proportion to an argument are refused ([`REFUSED_BUILTINS`])
//!   or allowed only with literal, capped arguments (`numbers.range`,
//!   `numbers.range_step`, `sprintf`, `concat`, `replace`). Compiling runs none of
//!   the policy's code.
//! * **Every evaluation** is bounded by time ([`EVAL_TIME_LIMIT`], checked between
//!   instructions), by instructions on the VM ([`MAX_INSTRUCTIONS`]) and by memory:
//!   what one evaluation adds on its thread ([`EVAL_MEMORY_BUDGET`], checked at every
//!   VM instruction) and a process-wide ceiling ([`PROCESS_MEMORY_CEILING`]) that
//!   builtins check inside their own loops. regorus' allocator (mimalloc with its
//!   counters, feature `allocator-memory-limits`) is the process's allocator.
//! * **Nothing a sponsor wrote runs on an async worker.** A single instruction can
//!   outrun every limit above (a comparison of values built from shared parts walks
//!   2^depth leaves; see [`super::contain`]), and a thread cannot be killed. Hot-path
//!   evaluations ([`PolicyEngine::evaluate_contained`]) run on a pool of dedicated
//!   threads (one per CPU); compiles for validation and dry runs ([`on_pool`]) on a
//!   second one with half the CPUs. A caller waits at most [`CALL_DEADLINE`] (dry
//!   runs: [`POOL_DEADLINE`] after [`POOL_WAIT`] in the queue); a job still running
//!   past [`STUCK_AFTER`] is abandoned to the least scheduling priority and replaced,
//!   and its sponsor's evaluations are refused until it ends.
//! * A sponsor whose policy hits a limit on the hot path is in quarantine for
//!   [`QUARANTINE`] (their evaluations are denied without running), so a hostile
//!   policy costs one cut-off run per period, not one per call.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, RwLock};
use std::time::{Duration, Instant};

use app::error::AppError;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::VmError;
use regorus::rvm::{Program, RegoVM};
use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead};
use regorus::{CompiledPolicy, Engine, LimitError, MemoryBudgetConfig, Value};
use serde::{Deserialize, Serialize};

use super::contain::{Contained, Evaluators};
use crate::digest::sha256_hex;

/// Longest a single evaluation may run before it is cut off (and denied). It is
/// wall-clock time: an ordinary policy takes well under a millisecond, and the
/// margin keeps a CPU-starved host (seen at 50 ms) from denying ordinary calls
/// while a runaway policy is still stopped quickly.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);
/// Instructions one evaluation may execute on the VM: about a hundred times what a
/// long allow-list policy needs (4,000 elements take ~30,000), tens of milliseconds.
pub const MAX_INSTRUCTIONS: usize = 2_000_000;
/// Memory one evaluation may add on its thread (VM; checked at every instruction).
/// The policy input is a few kilobytes.
pub const EVAL_MEMORY_BUDGET: u64 = 16 * 1024 * 1024;
/// Above this much allocated memory in the whole process, builtins stop inside their
/// loops and evaluations fail (deny). The default; `AEGIS_POLICY_MEMORY_CEILING_MIB`
/// sets it ([`set_process_memory_ceiling`]).
pub const PROCESS_MEMORY_CEILING: u64 = 2 * 1024 * 1024 * 1024;
/// Most elements `numbers.range` / `numbers.range_step` may produce.
pub const MAX_RANGE: i64 = 100_000;
/// Longest literal that a builtin may repeat once per element or match
/// (`concat`'s delimiter, `replace`'s replacement).
pub const MAX_REPEATED_LITERAL: usize = 16;
/// Most formatting verbs in one `sprintf`, and most digits of a width or precision.
pub const MAX_SPRINTF_VERBS: usize = 16;
pub const MAX_SPRINTF_WIDTH_DIGITS: usize = 3;
/// Compiled policies kept.
const CACHE_LIMIT: usize = 1024;
/// How long a sponsor's evaluations are refused (denied without running) after one of
/// its policies hit a limit on the hot path.
pub const QUARANTINE: Duration = Duration::from_secs(30);
/// Sponsors remembered in quarantine at most (past it, expired entries are dropped,
/// then the oldest).
const QUARANTINE_LIMIT: usize = 10_000;
/// With [`POOL_DEADLINE`], the longest a caller waits for a compile or dry run:
/// `policy_busy` when its job has not started by then.
pub const POOL_WAIT: Duration = Duration::from_secs(1);
/// A compile or dry run running longer is abandoned (`policy_limit_exceeded`).
pub const POOL_DEADLINE: Duration = Duration::from_secs(2);
/// Longest a caller waits for a contained evaluation's answer (queueing included).
pub const CALL_DEADLINE: Duration = Duration::from_secs(1);
/// A contained evaluation still running after this long is abandoned (see
/// [`super::contain`]): twice [`EVAL_TIME_LIMIT`], which only an evaluation stuck
/// inside one instruction passes (or one starved of CPU: it still answers its caller
/// when it ends). Shorter than [`CALL_DEADLINE`], so the sponsor's queued calls are
/// refused as held rather than left to time out.
pub const STUCK_AFTER: Duration = Duration::from_millis(500);
/// Marks an evaluation error that is a resource limit (time, instructions, memory).
pub const LIMIT_MARK: &str = "resource limit exceeded";

/// Builtins a sponsor's policy may not call, and why.
pub const REFUSED_BUILTINS: &[(&str, &str)] = &[
    ("net.cidr_expand", "it lists every address of a network (`::/0` never ends)"),
    ("regex.replace", "its output grows with every match"),
    ("strings.replace_n", "its output grows with every match"),
    ("regex.globs_match", "intersecting patterns can take exponential time"),
    ("json.marshal", "it expands shared values without bound"),
    ("json.marshal_with_options", "it expands shared values without bound"),
    ("yaml.marshal", "it expands shared values without bound"),
    ("walk", "it lists every path of a value"),
    ("graph.reachable", "it walks a graph of any size"),
    ("graph.reachable_paths", "it lists every path of a graph"),
    ("trace", "it writes to the server's log"),
    ("http.send", "policies make no network calls"),
    ("opa.runtime", "it reveals the server's environment"),
    ("time.now_ns", "decisions must replay exactly (the time is in the input)"),
    ("rand.intn", "decisions must replay exactly"),
    ("uuid.rfc4122", "decisions must replay exactly"),
    ("test.sleep", "it stalls the server"),
];

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

impl Evaluation {
    /// The engine cut the evaluation off at one of its limits (time, instructions,
    /// memory).
    pub fn hit_limit(&self) -> bool {
        self.error.as_deref().is_some_and(|e| e.contains(LIMIT_MARK))
    }

    fn denied(policy_sha256: String, error: String) -> Self {
        Evaluation {
            decision: Decision::Deny,
            reasons: vec![],
            policy_sha256,
            forward_credentials: false,
            error: Some(error),
        }
    }
}

/// One cache entry: filled once (single flight), stamped on every use.
struct Slot {
    compiled: OnceLock<Result<Arc<Compiled>, String>>,
    used: AtomicU64,
}

pub struct PolicyEngine {
    cache: RwLock<HashMap<String, Arc<Slot>>>,
    /// Sponsors whose policy hit a limit, until when their evaluations are refused.
    quarantine: RwLock<HashMap<String, Instant>>,
    /// `quarantine` is empty: the common case skips its lock.
    quarantined: AtomicUsize,
    capacity: usize,
    /// Stamps the entries' last use.
    clock: AtomicU64,
    /// Compiles done (a cached or concurrent call does none).
    compiles: AtomicU64,
}

impl Default for PolicyEngine {
    fn default() -> Self {
        Self::with_capacity(CACHE_LIMIT)
    }
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
            vm.set_max_instructions(MAX_INSTRUCTIONS);
            vm.set_memory_budget_config(Some(MemoryBudgetConfig {
                limit: NonZeroU64::new(EVAL_MEMORY_BUDGET).expect("non-zero"),
            }));
            vm
        });
        vm.set_input(input);
        let result = match catch_unwind(AssertUnwindSafe(|| vm.execute())) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(describe_vm_error(&e)),
            Err(_) => return Err("the policy engine failed (panic)".into()),
        };
        // A VM whose run failed (a time-out, an error, a panic) is dropped, never reused.
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
        match catch_unwind(AssertUnwindSafe(|| self.policy.eval_with_input(input))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.downcast_ref::<LimitError>().is_some() => Err(format!("{LIMIT_MARK}: {e}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the policy engine failed (panic)".into()),
        }
    }
}

fn describe_vm_error(e: &VmError) -> String {
    match e {
        VmError::InstructionLimitExceeded { .. }
        | VmError::TimeLimitExceeded { .. }
        | VmError::MemoryLimitExceeded { .. }
        | VmError::MemoryBudgetExceeded { .. }
        | VmError::RegexSizeLimitExceeded { .. } => format!("{LIMIT_MARK}: {e}"),
        other => other.to_string(),
    }
}

fn install_limits() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        regorus::utils::limits::set_fallback_execution_timer_config(Some(
            regorus::utils::limits::ExecutionTimerConfig {
                limit: EVAL_TIME_LIMIT,
                check_interval: NonZeroU32::new(32).expect("non-zero"),
            },
        ));
        regorus::set_global_memory_limit(Some(PROCESS_MEMORY_CEILING));
    });
}

/// Sets the process-wide ceiling ([`PROCESS_MEMORY_CEILING`] unless configured):
/// above it, builtins stop inside their loops and evaluations are denied.
pub fn set_process_memory_ceiling(bytes: u64) {
    install_limits();
    regorus::set_global_memory_limit(Some(bytes));
}

/// Compiles `source`; the error is the compiler's message (or what [`vet`] refuses),
/// fit to show the author. Runs none of the policy's code.
pub fn compile(source: &str) -> Result<CompiledPolicy, String> {
    install_limits();
    let mut engine = Engine::new();
    engine.add_policy("policy.rego".into(), source.to_owned()).map_err(|e| e.to_string())?;
    let packages = engine.get_packages().map_err(|e| e.to_string())?;
    if !packages.iter().any(|p| p == "data.aegis") {
        return Err("the policy must be in `package aegis`".into());
    }
    let mut defines_decision = false;
    for module in engine.get_modules().iter() {
        vet(module)?;
        defines_decision |= defines(module, "decision");
    }
    if !defines_decision {
        return Err("the policy must define `decision`".into());
    }
    engine.add_policy("aegis_entry.rego".into(), ENTRY_MODULE.to_owned()).map_err(|e| e.to_string())?;
    engine.compile_with_entrypoint(&ENTRY_RULE.into()).map_err(|e| e.to_string())
}

/// Whether `module` has a rule named `name` (or a part of one: `name.x`, `name[k]`).
fn defines(module: &Module, name: &str) -> bool {
    module.policy.iter().any(|rule| {
        let refr = match rule.as_ref() {
            Rule::Spec { head, .. } => match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } | RuleHead::Func { refr, .. } => {
                    refr
                }
            },
            Rule::Default { refr, .. } => refr,
        };
        regorus::utils::get_path_string(refr, None).is_ok_and(|path| {
            path == name || path.strip_prefix(name).is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    })
}

/// Refuses what a sponsor's policy may not do before any of it runs: the builtins
/// in [`REFUSED_BUILTINS`], and the capped ones with other than literal, small
/// arguments. Walks the whole syntax tree (iteratively: a deeply nested policy
/// cannot exhaust the stack here).
pub fn vet(module: &Module) -> Result<(), String> {
    enum Node<'a> {
        Expr(&'a Expr),
        Query(&'a Query),
    }
    let mut stack: Vec<Node> = Vec::new();
    for rule in &module.policy {
        match rule.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        stack.push(Node::Expr(refr));
                        stack.extend(assign.iter().map(|a| Node::Expr(&a.value)));
                    }
                    RuleHead::Set { refr, key, .. } => {
                        stack.push(Node::Expr(refr));
                        stack.extend(key.iter().map(|k| Node::Expr(k)));
                    }
                    RuleHead::Func { refr, args, assign, .. } => {
                        stack.push(Node::Expr(refr));
                        stack.extend(args.iter().map(|a| Node::Expr(a)));
                        stack.extend(assign.iter().map(|a| Node::Expr(&a.value)));
                    }
                }
                for body in bodies {
                    stack.extend(body.assign.iter().map(|a| Node::Expr(&a.value)));
                    stack.push(Node::Query(&body.query));
                }
            }
            Rule::Default { refr, args, value, .. } => {
                stack.push(Node::Expr(refr));
                stack.extend(args.iter().map(|a| Node::Expr(a)));
                stack.push(Node::Expr(value));
            }
        }
    }
    while let Some(node) = stack.pop() {
        match node {
            Node::Query(query) => {
                for stmt in &query.stmts {
                    for with in &stmt.with_mods {
                        stack.push(Node::Expr(&with.refr));
                        stack.push(Node::Expr(&with.r#as));
                    }
                    match &stmt.literal {
                        Literal::SomeVars { .. } => {}
                        Literal::SomeIn { key, value, collection, .. } => {
                            stack.extend(key.iter().map(|k| Node::Expr(k)));
                            stack.push(Node::Expr(value));
                            stack.push(Node::Expr(collection));
                        }
                        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                            stack.push(Node::Expr(expr))
                        }
                        Literal::Every { domain, query, .. } => {
                            stack.push(Node::Expr(domain));
                            stack.push(Node::Query(query));
                        }
                    }
                }
            }
            Node::Expr(expr) => match expr {
                Expr::String { .. }
                | Expr::RawString { .. }
                | Expr::Number { .. }
                | Expr::Bool { .. }
                | Expr::Null { .. }
                | Expr::Var { .. } => {}
                Expr::Array { items, .. } | Expr::Set { items, .. } => {
                    stack.extend(items.iter().map(|i| Node::Expr(i)))
                }
                Expr::Object { fields, .. } => {
                    for (_, k, v) in fields {
                        stack.push(Node::Expr(k));
                        stack.push(Node::Expr(v));
                    }
                }
                Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                    stack.push(Node::Expr(term));
                    stack.push(Node::Query(query));
                }
                Expr::ObjectCompr { key, value, query, .. } => {
                    stack.push(Node::Expr(key));
                    stack.push(Node::Expr(value));
                    stack.push(Node::Query(query));
                }
                Expr::Call { span, fcn, params, .. } => {
                    vet_call(fcn, params).map_err(|e| format!("line {}: {e}", span.line))?;
                    stack.push(Node::Expr(fcn));
                    stack.extend(params.iter().map(|p| Node::Expr(p)));
                }
                Expr::UnaryExpr { expr, .. } => stack.push(Node::Expr(expr)),
                Expr::RefDot { refr, .. } => stack.push(Node::Expr(refr)),
                Expr::RefBrack { refr, index, .. } => {
                    stack.push(Node::Expr(refr));
                    stack.push(Node::Expr(index));
                }
                Expr::BinExpr { lhs, rhs, .. }
                | Expr::BoolExpr { lhs, rhs, .. }
                | Expr::ArithExpr { lhs, rhs, .. }
                | Expr::AssignExpr { lhs, rhs, .. } => {
                    stack.push(Node::Expr(lhs));
                    stack.push(Node::Expr(rhs));
                }
                Expr::Membership { key, value, collection, .. } => {
                    stack.extend(key.iter().map(|k| Node::Expr(k)));
                    stack.push(Node::Expr(value));
                    stack.push(Node::Expr(collection));
                }
            },
        }
    }
    Ok(())
}

/// The checks on one call. A user function named like a capped builtin is held to
/// the same rules (simpler than resolving it, and never wrong to refuse).
fn vet_call(fcn: &Expr, params: &[regorus::unstable::Ref<Expr>]) -> Result<(), String> {
    let name = regorus::utils::get_path_string(fcn, None).map_err(|_| "unsupported call".to_owned())?;
    if let Some((_, why)) = REFUSED_BUILTINS.iter().find(|(n, _)| *n == name) {
        return Err(format!("`{name}` is not available to policies: {why}"));
    }
    let arg = |i: usize| params.get(i).map(|p| p.as_ref());
    match name.as_str() {
        "numbers.range" | "numbers.range_step" => {
            let literal = |i| arg(i).and_then(int_literal);
            let bounds = (literal(0), literal(1));
            let step = if name == "numbers.range" { Some(1) } else { literal(2) };
            let (Some(from), Some(to), Some(step)) = (bounds.0, bounds.1, step) else {
                return Err(format!("`{name}` takes integer literals only (at most {MAX_RANGE} elements)"));
            };
            let count = (i128::from(to) - i128::from(from)).abs() / i128::from(step.max(1)) + 1;
            if step < 1 || count > i128::from(MAX_RANGE) {
                return Err(format!("`{name}` may produce at most {MAX_RANGE} elements (a positive step)"));
            }
        }
        "sprintf" => {
            let Some(format) = arg(0).and_then(str_literal) else {
                return Err("`sprintf` takes a string literal as its format".into());
            };
            let (mut verbs, mut chars) = (0, format.chars().peekable());
            while let Some(c) = chars.next() {
                if c != '%' {
                    continue;
                }
                if chars.peek() == Some(&'%') {
                    chars.next();
                    continue;
                }
                verbs += 1;
                let mut digits = 0;
                while chars.peek().is_some_and(|c| c.is_ascii_digit() || *c == '.') {
                    digits += 1;
                    chars.next();
                }
                if digits > MAX_SPRINTF_WIDTH_DIGITS {
                    return Err(format!("`sprintf` widths have at most {MAX_SPRINTF_WIDTH_DIGITS} digits"));
                }
            }
            if verbs > MAX_SPRINTF_VERBS {
                return Err(format!("`sprintf` takes at most {MAX_SPRINTF_VERBS} verbs"));
            }
        }
        "concat" | "replace" => {
            // The literal repeated once per element or match: the delimiter, the replacement.
            let (index, what) = if name == "concat" { (0, "delimiter") } else { (2, "replacement") };
            let small = arg(index).and_then(str_literal).is_some_and(|l| l.len() <= MAX_REPEATED_LITERAL);
            if !small {
                return Err(format!(
                    "`{name}` takes a string literal of at most {MAX_REPEATED_LITERAL} bytes as its {what}"
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

fn int_literal(e: &Expr) -> Option<i64> {
    match e {
        Expr::Number { value, .. } => value.as_i64().ok(),
        Expr::UnaryExpr { expr, .. } => match expr.as_ref() {
            Expr::Number { value, .. } => value.as_i64().ok().and_then(i64::checked_neg),
            _ => None,
        },
        _ => None,
    }
}

fn str_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::String { value, .. } | Expr::RawString { value, .. } => {
            value.as_string().ok().map(|s| s.to_string())
        }
        _ => None,
    }
}

/// Runs `job` on the bounded pool for compiles and dry runs (see the module's docs),
/// tagged with the sponsor it runs for.
pub async fn on_pool<T: Send + 'static>(
    tag: Option<&str>,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    static POOL: OnceLock<Evaluators> = OnceLock::new();
    let pool = POOL.get_or_init(|| Evaluators::new("policy-admin", pool_size(), POOL_DEADLINE));
    match pool.run(tag, POOL_DEADLINE + POOL_WAIT, job).await {
        Ok(value) => Ok(value),
        Err(Contained::Busy) => Err(AppError {
            retry_after_secs: Some(1),
            ..AppError::unavailable(
                "policy_busy",
                "the policy engine is busy with other compiles; try again shortly",
            )
        }),
        Err(Contained::Overran) => Err(AppError::new(
            422,
            "policy_limit_exceeded",
            format!("the policy did not finish within {} s", POOL_DEADLINE.as_secs()),
        )),
        Err(Contained::Held) => Err(AppError::new(
            422,
            "policy_limit_exceeded",
            "an earlier run of this sponsor's policy is still running past the engine's limits; try again when it ends",
        )),
        Err(Contained::Failed) => {
            tracing::error!("policy job failed (panic)");
            Err(AppError::new(422, "policy_invalid", "the policy engine failed on this policy"))
        }
    }
}

/// The hot path's contained evaluators: one thread per CPU (at least two).
fn hot_pool() -> &'static Evaluators {
    static POOL: OnceLock<Evaluators> = OnceLock::new();
    POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Evaluators::new("policy", cpus.max(2), STUCK_AFTER)
    })
}

/// Compile and dry-run jobs running at once, on blocking threads: half the CPUs
/// (at least one), so they can never take every core from the proxy.
pub fn pool_size() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1)
}

/// Compiles `source` on the pool (nothing cached): the check a sponsor's new policy
/// passes before it is stored.
pub async fn validate(source: String) -> Result<(), AppError> {
    on_pool(None, move || compile(&source).map(|_| ()))
        .await?
        .map_err(|e| AppError::new(422, "policy_invalid", e))
}

/// A dry run: compiles `source` (never cached) and evaluates it against `input` on
/// the pool. A policy that does not compile is `policy_invalid`; one cut off at a
/// limit is `policy_limit_exceeded`; any other failure is a deny with its error, as
/// on the hot path.
pub async fn dry_run(source: String, input: serde_json::Value) -> Result<Evaluation, AppError> {
    let sponsor = input["agent"]["sponsor"].as_str().map(str::to_owned);
    let evaluation = on_pool(sponsor.as_deref(), move || {
        let compiled = compile(&source).map(|policy| Compiled::new(&source, policy))?;
        Ok::<_, String>(evaluate_compiled(&compiled, input))
    })
    .await?
    .map_err(|e| AppError::new(422, "policy_invalid", e))?;
    if evaluation.hit_limit() {
        return Err(AppError::new(
            422,
            "policy_limit_exceeded",
            evaluation.error.unwrap_or_else(|| LIMIT_MARK.to_owned()),
        ));
    }
    Ok(evaluation)
}

fn evaluate_compiled(compiled: &Compiled, input: serde_json::Value) -> Evaluation {
    let policy_sha256 = compiled.sha256.clone();
    match verdict(compiled.eval(Value::from(input))) {
        Ok(Verdict { decision, reasons, forward_credentials }) => {
            Evaluation { decision, reasons, policy_sha256, forward_credentials, error: None }
        }
        Err(error) => Evaluation::denied(policy_sha256, error),
    }
}

impl PolicyEngine {
    pub fn new() -> Self {
        install_limits();
        Self::default()
    }

    /// An engine that keeps at most `capacity` compiled policies.
    pub fn with_capacity(capacity: usize) -> Self {
        install_limits();
        Self {
            cache: RwLock::default(),
            quarantine: RwLock::default(),
            quarantined: AtomicUsize::new(0),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
        }
    }

    /// The cached compile of `source`: compiled once however many callers ask at
    /// once; the least recently used entry makes room past [`CACHE_LIMIT`]. A
    /// failed compile is not kept.
    fn compiled(&self, source: &str) -> Result<Arc<Compiled>, String> {
        let found = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(source).cloned();
        let slot = match found {
            Some(slot) => slot,
            None => {
                let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                if !cache.contains_key(source) && cache.len() >= self.capacity {
                    let oldest = cache
                        .iter()
                        .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        cache.remove(&oldest);
                    }
                }
                cache
                    .entry(source.to_owned())
                    .or_insert_with(|| Arc::new(Slot { compiled: OnceLock::new(), used: AtomicU64::new(0) }))
                    .clone()
            }
        };
        slot.used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let result = slot
            .compiled
            .get_or_init(|| {
                self.compiles.fetch_add(1, Ordering::Relaxed);
                compile(source).map(|p| Arc::new(Compiled::new(source, p)))
            })
            .clone();
        if result.is_err() {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            if cache.get(source).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                cache.remove(source);
            }
        }
        result
    }

    /// Whether `source` is in the cache (for tests).
    pub fn is_cached(&self, source: &str) -> bool {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).contains_key(source)
    }

    /// Compiles done so far (for tests).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Evaluates `source` against `input`. Never fails: every problem is a deny with
    /// the problem in `error`.
    pub fn evaluate(&self, source: &str, input: &serde_json::Value) -> Evaluation {
        self.evaluate_value(source, input.clone())
    }

    /// [`Self::evaluate`], taking the input: it goes to the engine as a value,
    /// never re-parsed from JSON text.
    ///
    /// A policy cut off at a limit puts its sponsor (`input.agent.sponsor`) in
    /// quarantine for [`QUARANTINE`]: their evaluations are denied without running,
    /// so a hostile policy costs the server one cut-off run per period, not one per
    /// call.
    pub fn evaluate_value(&self, source: &str, input: serde_json::Value) -> Evaluation {
        let compiled = match self.compiled(source) {
            Ok(compiled) => compiled,
            Err(e) => {
                return Evaluation::denied(
                    sha256_hex(source.as_bytes()),
                    format!("policy does not compile: {e}"),
                );
            }
        };
        if let Some(sponsor) = input["agent"]["sponsor"].as_str()
            && self.in_quarantine(sponsor)
        {
            return Evaluation::denied(
                compiled.sha256.clone(),
                format!(
                    "{LIMIT_MARK}: a policy of this sponsor exceeded the engine's limits; \
                     its evaluations are refused for {} s",
                    QUARANTINE.as_secs()
                ),
            );
        }
        let sponsor = input["agent"]["sponsor"].as_str().map(str::to_owned);
        let evaluation = evaluate_compiled(&compiled, input);
        if evaluation.hit_limit()
            && let Some(sponsor) = sponsor
        {
            tracing::warn!(sponsor = %sponsor, policy = %compiled.sha256, error = ?evaluation.error, "policy hit a limit; sponsor in quarantine");
            self.put_in_quarantine(sponsor);
        }
        evaluation
    }

    /// [`Self::evaluate_value`] on the contained pool ([`super::contain`]): the
    /// hot path's evaluation. It never runs on the caller's (async) thread; an
    /// evaluation that does not answer within [`CALL_DEADLINE`] is a deny at a limit
    /// and puts its sponsor in quarantine, and while it still runs (abandoned, at
    /// the least priority) its sponsor's evaluations are refused without running.
    ///
    /// The shipped policies ([`super::BUILTIN`]) are AEGIS's own code, not a
    /// sponsor's: they run inline, without the hop (about 16 µs, more than the
    /// evaluation itself).
    pub async fn evaluate_contained(
        self: &Arc<Self>,
        source: String,
        input: serde_json::Value,
    ) -> Evaluation {
        if super::BUILTIN.iter().any(|(_, _, shipped)| *shipped == source) {
            return self.evaluate_value(&source, input);
        }
        let sponsor = input["agent"]["sponsor"].as_str().map(str::to_owned);
        let source: Arc<str> = source.into();
        let (engine, job_source) = (self.clone(), source.clone());
        let job = move || engine.evaluate_value(&job_source, input);
        let refused = match hot_pool().run(sponsor.as_deref(), CALL_DEADLINE, job).await {
            Ok(evaluation) => return evaluation,
            Err(Contained::Overran) => {
                if let Some(sponsor) = sponsor {
                    tracing::warn!(sponsor = %sponsor, "policy evaluation did not answer in time; sponsor in quarantine");
                    self.put_in_quarantine(sponsor);
                }
                format!("{LIMIT_MARK}: the policy did not answer within {} ms", CALL_DEADLINE.as_millis())
            }
            Err(Contained::Held) => format!(
                "{LIMIT_MARK}: an evaluation of this sponsor's policy is still running past the engine's \
                 limits; its evaluations are refused until it ends"
            ),
            Err(Contained::Busy) => {
                "the policy engine is busy; the call is denied (try again shortly)".to_owned()
            }
            Err(Contained::Failed) => "the policy engine failed (panic)".to_owned(),
        };
        Evaluation::denied(sha256_hex(source.as_bytes()), refused)
    }

    fn in_quarantine(&self, sponsor: &str) -> bool {
        if self.quarantined.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let quarantine = self.quarantine.read().unwrap_or_else(|e| e.into_inner());
        quarantine.get(sponsor).is_some_and(|until| Instant::now() < *until)
    }

    fn put_in_quarantine(&self, sponsor: String) {
        let now = Instant::now();
        let mut quarantine = self.quarantine.write().unwrap_or_else(|e| e.into_inner());
        if quarantine.len() >= QUARANTINE_LIMIT {
            quarantine.retain(|_, until| now < *until);
            if quarantine.len() >= QUARANTINE_LIMIT {
                let oldest = quarantine.iter().min_by_key(|(_, until)| **until).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    quarantine.remove(&oldest);
                }
            }
        }
        quarantine.insert(sponsor, now + QUARANTINE);
        self.quarantined.store(quarantine.len(), Ordering::Relaxed);
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
    use crate::digest::canonical_json;
    use serde_json::json;

    const DEFAULT: &str = include_str!("../../../policies/default.rego");
    const PERMISSIVE: &str = include_str!("../../../policies/permissive.rego");
    const MCP: &str = include_str!("../../../policies/mcp.rego");

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
        compile(MCP).unwrap();
    }

    /// An MCP request's input (issue #21): the upstream POST, with `input.mcp`.
    fn mcp_input(method: &str, tool: Option<&str>, trust: i64) -> serde_json::Value {
        let mut i = input("POST", trust, 0);
        i["mcp"] = json!({"server": "notes", "method": method, "tool": tool, "arguments": {}});
        i
    }

    #[test]
    fn shipped_policies_decide_mcp_tools() {
        use Decision::{Allow, Deny, RequireApproval};
        let engine = PolicyEngine::new();
        let decide = |source: &str, method: &str, tool: Option<&str>, trust: i64| {
            let e = engine.evaluate(source, &mcp_input(method, tool, trust));
            assert!(e.error.is_none(), "{method} {tool:?} at {trust}: {e:?}");
            e.decision
        };
        // The default policy: listing tools is a read; a tool call is a write.
        assert_eq!(decide(DEFAULT, "tools/list", None, 500), Allow);
        assert_eq!(decide(DEFAULT, "tools/list", None, 200), Deny);
        assert_eq!(decide(DEFAULT, "tools/call", Some("read_note"), 500), RequireApproval);
        assert_eq!(decide(DEFAULT, "tools/call", Some("read_note"), 700), Allow);
        // The MCP example: read-only allowed, destructive waits, admin needs trust 800.
        assert_eq!(decide(MCP, "tools/list", None, 500), Allow);
        assert_eq!(decide(MCP, "tools/call", Some("read_note"), 300), Allow);
        assert_eq!(decide(MCP, "tools/call", Some("list_notes"), 299), Deny);
        assert_eq!(decide(MCP, "tools/call", Some("delete_note"), 950), RequireApproval);
        assert_eq!(decide(MCP, "tools/call", Some("drop_all"), 500), RequireApproval);
        assert_eq!(decide(MCP, "tools/call", Some("undelete_note"), 500), RequireApproval);
        assert_eq!(decide(MCP, "tools/call", Some("admin_reset"), 799), Deny);
        assert_eq!(decide(MCP, "tools/call", Some("admin_reset"), 800), Allow);
        assert_eq!(decide(MCP, "tools/call", Some("add"), 700), Allow);
        assert_eq!(decide(MCP, "tools/call", Some("add"), 699), RequireApproval);
        // Its plain HTTP side: reads only.
        assert_eq!(engine.evaluate(MCP, &input("GET", 300, 0)).decision, Allow);
        assert_eq!(engine.evaluate(MCP, &input("POST", 900, 0)).decision, Deny);
        let admin = engine.evaluate(MCP, &mcp_input("tools/call", Some("admin_reset"), 500));
        assert_eq!(admin.reasons, vec!["admin tools need trust 800"]);
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
        for source in [DEFAULT, PERMISSIVE, MCP].iter().chain(EXTRA) {
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

    /// A policy that is `source`'s rules plus `decision := "allow" if EXPR`.
    fn allow_if(expr: &str) -> String {
        format!("package aegis\nimport rego.v1\ndecision := \"allow\" if {{ {expr} }}\n")
    }

    #[test]
    fn builtins_that_allocate_without_bound_are_refused_before_anything_runs() {
        let refused = [
            ("range over an input", "count(numbers.range(1, input.action.cost_micros)) > 0"),
            ("huge literal range", "count(numbers.range(0, 1000000000000)) > 0"),
            ("range just past the cap", "count(numbers.range(1, 100001)) > 0"),
            ("negative huge range", "count(numbers.range(-1000000000000, 0)) > 0"),
            ("range_step with a computed step", "count(numbers.range_step(1, 10, input.agent.trust)) > 0"),
            ("range_step with a zero step", "count(numbers.range_step(1, 10, 0)) > 0"),
            ("range by bracket", "count(numbers[\"range\"](1, input.action.cost_micros)) > 0"),
            ("cidr_expand", "count(net.cidr_expand(\"::/0\")) > 0"),
            ("cidr_expand of an input", "count(net.cidr_expand(input.action.host)) > 0"),
            ("sprintf width", "sprintf(\"%9999999999d\", [1]) != \"\""),
            ("sprintf format from the input", "sprintf(input.action.path, [1]) != \"\""),
            ("concat with a computed delimiter", "concat(input.action.path, [\"a\", \"b\"]) != \"\""),
            (
                "replace with a long replacement",
                "replace(input.action.path, \"/\", \"xxxxxxxxxxxxxxxxxxxxxxxx\") != \"\"",
            ),
            ("regex.replace", "regex.replace(input.action.path, \"a*\", \"b\") != \"\""),
            ("json.marshal", "json.marshal(input) != \"\""),
            ("walk", "count([p | walk(input, [p, _])]) > 0"),
        ];
        let engine = PolicyEngine::new();
        for (name, expr) in refused {
            let source = allow_if(expr);
            let error = compile(&source).err().unwrap_or_else(|| panic!("{name}: compiled"));
            assert!(error.starts_with("line 3: `"), "{name}: {error}");
            // On the hot path: a deny, fast, without running the policy.
            let started = std::time::Instant::now();
            let e = engine.evaluate(&source, &input("GET", 500, 1_000_000_000_000));
            assert_eq!(e.decision, Decision::Deny, "{name}");
            assert!(e.error.unwrap().contains("policy does not compile"), "{name}");
            assert!(started.elapsed() < Duration::from_secs(5), "{name}: {:?}", started.elapsed());
        }
        // Their ordinary uses still compile.
        for expr in [
            "count(numbers.range(1, 100000)) > 0",
            "count(numbers.range(-5, 5)) == 11",
            "count(numbers.range_step(0, 999990, 10)) > 0",
            "sprintf(\"%s costs %05d (%.2f)\", [input.action.host, 1, 2.5]) != \"\"",
            "concat(\", \", input.agent.tags) != \"x\"",
            "replace(input.action.path, \"/\", \"_\") != \"\"",
            "net.cidr_contains(\"10.0.0.0/8\", \"10.1.2.3\")",
        ] {
            compile(&allow_if(expr)).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }

    #[test]
    fn memory_hungry_policies_are_cut_off_by_the_budget() {
        // Each rule doubles the string before it: 16 B · 2^30 = 16 GiB if nothing stopped it.
        let mut source = String::from("package aegis\nimport rego.v1\ns0 := \"0123456789abcdef\"\n");
        for i in 1..=30 {
            source.push_str(&format!("s{i} := concat(\"\", [s{p}, s{p}])\n", p = i - 1));
        }
        source.push_str("decision := \"allow\" if count(s30) > 0\n");
        let compiled = Compiled::new(&source, compile(&source).unwrap());
        assert!(compiled.on_vm());
        let started = std::time::Instant::now();
        let e = PolicyEngine::new().evaluate(&source, &input("GET", 500, 0));
        assert_eq!(e.decision, Decision::Deny, "{e:?}");
        assert!(e.hit_limit(), "{e:?}");
        // The memory budget stopped it (not the clock).
        assert!(e.error.as_deref().unwrap().contains("memory budget"), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn deep_loops_are_cut_off_by_the_instruction_limit_or_the_clock() {
        let source = allow_if(
            "count([x | some a in numbers.range(1, 1000); some b in numbers.range(1, 1000); \
             some c in numbers.range(1, 1000); x := a + b + c]) > 0",
        );
        let started = std::time::Instant::now();
        let e = PolicyEngine::new().evaluate(&source, &input("GET", 500, 0));
        assert_eq!(e.decision, Decision::Deny, "{e:?}");
        assert!(e.hit_limit(), "{e:?}");
        eprintln!("deep loop: {:?} after {:?}", e.error, started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn concurrent_first_calls_compile_once() {
        let engine = Arc::new(PolicyEngine::new());
        let source = allow_if("input.agent.trust > 1");
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (engine, barrier, source) = (engine.clone(), barrier.clone(), source.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    engine.evaluate(&source, &input("GET", 500, 0)).decision
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Decision::Allow);
        }
        assert_eq!(engine.compiles(), 1);
    }

    #[test]
    fn the_cache_drops_the_least_recently_used_policy() {
        let engine = PolicyEngine::with_capacity(2);
        let (a, b, c) = (
            allow_if("input.agent.trust > 1"),
            allow_if("input.agent.trust > 2"),
            allow_if("input.agent.trust > 3"),
        );
        let i = input("GET", 500, 0);
        engine.evaluate(&a, &i);
        engine.evaluate(&b, &i);
        engine.evaluate(&a, &i);
        engine.evaluate(&c, &i);
        assert!(engine.is_cached(&a) && engine.is_cached(&c), "the recently used stay");
        assert!(!engine.is_cached(&b), "the least recently used goes");
        assert_eq!(engine.compiles(), 3);
        // A source that does not compile is not kept.
        engine.evaluate("package aegis\ndecision := (", &i);
        assert!(!engine.is_cached("package aegis\ndecision := ("));
    }

    #[test]
    fn a_sponsor_whose_policy_hit_a_limit_is_denied_without_running_for_a_while() {
        let engine = PolicyEngine::new();
        let looping = allow_if(
            "count([x | some a in numbers.range(1, 1000); some b in numbers.range(1, 1000); \
             some c in numbers.range(1, 1000); x := a + b + c]) > 0",
        );
        let mut hostile = input("GET", 500, 0);
        hostile["agent"]["sponsor"] = json!("hostile");
        let mut other = input("GET", 500, 0);
        other["agent"]["sponsor"] = json!("other");
        assert_eq!(engine.evaluate(PERMISSIVE, &other).decision, Decision::Allow); // compiled
        assert!(engine.evaluate(&looping, &hostile).hit_limit());
        // Even their harmless policy is refused now, at once; another sponsor is not.
        let started = std::time::Instant::now();
        let e = engine.evaluate(PERMISSIVE, &hostile);
        assert_eq!(e.decision, Decision::Deny);
        assert!(e.error.unwrap().contains("refused for 30 s"));
        assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
        assert_eq!(engine.evaluate(PERMISSIVE, &other).decision, Decision::Allow);
    }

    #[tokio::test]
    async fn dry_runs_answer_limits_as_errors_and_are_not_cached() {
        let looping = allow_if(
            "count([x | some a in numbers.range(1, 1000); some b in numbers.range(1, 1000); \
             some c in numbers.range(1, 1000); x := a + b + c]) > 0",
        );
        let e = dry_run(looping, input("GET", 500, 0)).await.unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (422, "policy_limit_exceeded"), "{}", e.message);
        let e = dry_run(allow_if("count(net.cidr_expand(\"::/0\")) > 0"), input("GET", 500, 0))
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (422, "policy_invalid"), "{}", e.message);
        assert!(e.message.contains("net.cidr_expand"), "{}", e.message);
        let ok = dry_run(PERMISSIVE.to_owned(), input("GET", 500, 0)).await.unwrap();
        assert_eq!(ok.decision, Decision::Allow);
    }

    /// `a{i} := [a{i-1}, a{i-1}]` (and `b` alike) `depth` times over an input leaf,
    /// then `a == b`: one comparison walking 2^depth leaves, inside one instruction.
    fn shared_parts(depth: usize) -> String {
        let levels: String =
            (1..=depth).map(|i| format!("a{i} := [a{p}, a{p}]\nb{i} := [b{p}, b{p}]\n", p = i - 1)).collect();
        format!(
            "package aegis\nimport rego.v1\na0 := [input.action.method]\nb0 := [input.action.method]\n\
             {levels}decision := \"allow\" if a{depth} == b{depth}\n"
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_evaluation_stuck_inside_one_instruction_is_denied_in_bounded_time_and_contained() {
        let engine = Arc::new(PolicyEngine::new());
        let hostile = shared_parts(48);
        assert!(compile(&hostile).is_ok(), "nothing in the source gives it away");
        let mut stuck_input = input("GET", 500, 0);
        stuck_input["agent"]["sponsor"] = json!("sponsor-stuck-inside-one-instruction");

        let started = Instant::now();
        let e = engine.evaluate_contained(hostile.clone(), stuck_input.clone()).await;
        assert_eq!(e.decision, Decision::Deny);
        assert!(e.hit_limit(), "{e:?}");
        assert_eq!(e.policy_sha256, sha256_hex(hostile.as_bytes()));
        assert!(started.elapsed() < CALL_DEADLINE * 3, "answered after {:?}", started.elapsed());

        // Another sponsor is served while that evaluation still runs.
        for _ in 0..20 {
            let e = engine.evaluate_contained(PERMISSIVE.to_owned(), input("GET", 500, 0)).await;
            assert_eq!((e.decision, e.error), (Decision::Allow, None));
        }
        // The stuck sponsor's next calls are refused without running.
        let started = Instant::now();
        let e = engine.evaluate_contained(hostile, stuck_input).await;
        assert!(e.hit_limit(), "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }

    /// A chain of rules each built on the one before recurses once a rule in the
    /// engine: thousands of them (what fits in the source limit) must neither overflow
    /// an evaluator's stack — which would abort the whole process — nor stall it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_chain_of_rules_neither_overflows_the_stack_nor_stalls() {
        let engine = Arc::new(PolicyEngine::new());
        for depth in [400, 3500] {
            let levels: String = (1..=depth).map(|i| format!("a{i} := [a{p}]\n", p = i - 1)).collect();
            let source = format!(
                "package aegis\nimport rego.v1\na0 := [input.action.method]\n{levels}\
                 decision := \"allow\" if count(a{depth}) == 1\n"
            );
            assert!(source.len() <= 64 * 1024);
            let mut chained = input("GET", 500, 0);
            chained["agent"]["sponsor"] = json!(format!("sponsor-chain-{depth}"));
            let started = Instant::now();
            let e = engine.evaluate_contained(source, chained).await;
            // Allowed, or cut off at a limit: either way an answer, and the process lives.
            assert!(e.decision == Decision::Allow || e.hit_limit(), "{depth}: {e:?}");
            assert!(started.elapsed() < CALL_DEADLINE * 3, "{depth}: answered after {:?}", started.elapsed());
        }
    }
}
