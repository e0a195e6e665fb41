//! One agent: a header with its status and suspend/resume, and tabs chosen by
//! `?tab=` (plain links, so they work before the WebAssembly loads and can be
//! shared): activity, wallet, secrets, policy (with the MCP tools it lets the agent
//! see), trust and keys.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use uuid::Uuid;

use super::{FormError, OneTimeKey};
use crate::error::AppError;
use crate::live::Live;
use crate::model::{AgentStatus, AgentView, AuditRecord, TrustEventView, WalletEntry, WalletView};
use crate::money::{dollars, format_units};
use crate::rpc::{
    RotateAgentKey, SetAgentPolicy, SetAgentState, SetSecretGrant, UpdateWallet, agent_tools, agent_trust,
    agent_wallet, get_agent, list_audit, list_policies, list_secrets, take_new_key, wallet_history,
};

const TABS: [(&str, &str); 6] = [
    ("activity", "Activity"),
    ("wallet", "Wallet"),
    ("secrets", "Secrets"),
    ("policy", "Policy"),
    ("trust", "Trust"),
    ("keys", "Keys"),
];

type AgentResource = Resource<Result<AgentView, AppError>>;

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn loading(what: &'static str) -> impl IntoView {
    view! { <p class="muted loading" role="status">{format!("Loading {what}…")}</p> }
}

fn failed(e: AppError) -> AnyView {
    view! { <p class="alert error" role="alert" data-code=e.code.clone()>{e.message}</p> }.into_any()
}

#[component]
pub fn AgentPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = Memo::new(move |_| params.read().get("id").and_then(|s| s.parse::<Uuid>().ok()));
    let tab = Memo::new(move |_| {
        let asked = query.read().get("tab").unwrap_or_default();
        TABS.iter().find(|(t, _)| *t == asked).map_or("activity", |(t, _)| *t)
    });
    let set_state = ServerAction::<SetAgentState>::new();
    let set_policy = ServerAction::<SetAgentPolicy>::new();
    let rotate = ServerAction::<RotateAgentKey>::new();
    let tick = Live::get().map(|l| l.tick);
    let agent: AgentResource = Resource::new(
        move || {
            let versions = (set_state.version().get(), set_policy.version().get(), rotate.version().get());
            (id.get(), versions, tick.map(|t| t.get()))
        },
        |(id, _, _)| async move {
            match id {
                Some(id) => get_agent(id).await,
                None => Err(AppError::not_found("agent")),
            }
        },
    );
    view! {
        <Transition fallback=|| view! { <Title text="Agent"/>{loading("the agent")} }>
            {move || Suspend::new(async move {
                match agent.await {
                    Ok(a) => view! { <AgentHeader agent=a set_state/> }.into_any(),
                    Err(e) => view! {
                        <Title text="Agent"/>
                        <div class="card empty" id="agent-missing">
                            <h1>"Agent not found"</h1>
                            <p class="muted">{e.message}</p>
                            <a class="button" href="/agents">"Back to your agents"</a>
                        </div>
                    }.into_any(),
                }
            })}
        </Transition>
        {move || id.get().map(|id| view! {
            <nav class="tabs agent-tabs" aria-label="Agent sections">
                {TABS.into_iter().map(|(value, label)| view! {
                    <a href=format!("/agents/{id}?tab={value}")
                        aria-current=move || (tab.get() == value).then_some("page")>{label}</a>
                }).collect_view()}
            </nav>
        })}
        {move || id.get().map(|id| match tab.get() {
            "wallet" => view! { <WalletTab id/> }.into_any(),
            "secrets" => view! { <SecretsTab id/> }.into_any(),
            "policy" => view! { <PolicyTab id set_policy/> }.into_any(),
            "trust" => view! { <TrustTab id/> }.into_any(),
            "keys" => view! { <KeysTab id agent rotate/> }.into_any(),
            _ => view! { <ActivityTab id/> }.into_any(),
        })}
    }
}

#[component]
fn AgentHeader(agent: AgentView, set_state: ServerAction<SetAgentState>) -> impl IntoView {
    let a = agent;
    let status = a.status.as_str();
    let toggle = match a.status {
        AgentStatus::Active => Some(("suspend", "Suspend", "button danger")),
        AgentStatus::Suspended => Some(("resume", "Resume", "button primary")),
        AgentStatus::Revoked => None,
    };
    let error = Signal::derive(move || set_state.value().get().and_then(Result::err));
    view! {
        <Title text=a.name.clone()/>
        <p class="crumbs small"><a href="/agents">"Agents"</a>" / "</p>
        <div class="page-head agent-head" id="agent-head" data-status=status>
            <div class="agent-title">
                <h1>{a.name.clone()}</h1>
                <span class=format!("badge {status}") id="agent-status">{status}</span>
                <span class=format!("badge tier {}", a.tier)>{format!("{} · {}", a.tier, a.trust_score)}</span>
            </div>
            {toggle.map(|(state, label, class)| view! {
                <ActionForm action=set_state attr:class="inline">
                    <input type="hidden" name="id" value=a.id.to_string()/>
                    <input type="hidden" name="state" value=state/>
                    <button type="submit" class=class disabled=move || set_state.pending().get()>{label}</button>
                </ActionForm>
            })}
        </div>
        <p class="muted agent-sub">
            {a.description.clone().unwrap_or_else(|| "No description.".into())}
            " · policy "<strong>{a.policy.clone()}</strong>
            " · last seen "{a.last_seen_at.map(when).unwrap_or_else(|| "never".into())}
        </p>
        {a.suspended_reason.clone().filter(|_| a.status == AgentStatus::Suspended).map(|r| view! {
            <p class="alert suspended-note" role="status">{format!("Suspended: {r}. Its calls are refused until you resume it.")}</p>
        })}
        <FormError error/>
    }
}

/// The agent's recent audit records, newest first, a page at a time.
#[component]
fn ActivityTab(id: Uuid) -> impl IntoView {
    let query = use_query_map();
    let tick = Live::get().map(|l| l.tick);
    let records = Resource::new(
        move || (query.read().get("cursor"), tick.map(|t| t.get())),
        move |(cursor, _)| list_audit(Some(id.to_string()), None, None, None, cursor),
    );
    view! {
        <section class="card" aria-labelledby="activity-heading">
            <div class="section-head">
                <h2 id="activity-heading">"Recent activity"</h2>
                <a class="button small" href=format!("/audit?agent={id}")>"Open in the audit log"</a>
            </div>
            <Transition fallback=|| loading("activity")>
                {move || Suspend::new(async move {
                    match records.await {
                        Ok(page) if page.items.is_empty() => view! {
                            <p class="empty muted" id="activity-empty">
                                "No activity yet. Give the agent its key and point it at "
                                <code>"POST /api/proxy/execute"</code>"; every call it makes appears here."
                            </p>
                        }.into_any(),
                        Ok(page) => view! {
                            <div class="table-wrap">
                                <table class="table" id="activity-table">
                                    <thead><tr>
                                        <th scope="col">"Time"</th><th scope="col">"Kind"</th><th scope="col">"Decision"</th>
                                        <th scope="col">"Request"</th><th scope="col">"Cost"</th>
                                    </tr></thead>
                                    <tbody>{page.items.into_iter().map(activity_row).collect_view()}</tbody>
                                </table>
                            </div>
                            {page.next_cursor.map(|c| view! {
                                <a class="button ghost" href=format!("/agents/{id}?tab=activity&cursor={c}")>"Older records →"</a>
                            })}
                        }.into_any(),
                        Err(e) => failed(e),
                    }
                })}
            </Transition>
        </section>
    }
}

fn activity_row(r: AuditRecord) -> impl IntoView {
    let decision = r.decision.clone().unwrap_or_default();
    let target = match (&r.method, &r.host) {
        (Some(m), Some(h)) => format!("{m} {h}{}", r.path.clone().unwrap_or_default()),
        _ => "—".into(),
    };
    view! {
        <tr data-seq=r.seq data-kind=r.kind.clone()>
            <td class="small">{r.at.format("%Y-%m-%d %H:%M:%S").to_string()}</td>
            <td><code>{r.kind.clone()}</code>{r.stage.clone().map(|s| view! { <div class="muted small">{format!("stage {s}")}</div> })}</td>
            <td>{(!decision.is_empty()).then(|| view! { <span class=format!("badge {decision}")>{decision.clone()}</span> })}</td>
            <td class="small wrap">{target}{r.status.map(|s| format!(" → {s}"))}</td>
            <td>{(r.cost_micros > 0).then(|| dollars(r.cost_micros))}</td>
        </tr>
    }
}

#[component]
fn WalletTab(id: Uuid) -> impl IntoView {
    let update = ServerAction::<UpdateWallet>::new();
    // Changes only when a save succeeds, so a refused form keeps what was typed.
    let saves = Memo::new(move |prev: Option<&usize>| match update.value().get() {
        Some(Ok(_)) => update.version().get(),
        _ => prev.copied().unwrap_or(0),
    });
    let tick = Live::get().map(|l| l.tick);
    // Spend updates live; the form's values only after a save (not mid-edit).
    let summary = Resource::new(move || (saves.get(), tick.map(|t| t.get())), move |_| agent_wallet(id));
    let limits = Resource::new(move || saves.get(), move |_| agent_wallet(id));
    let error = Signal::derive(move || update.value().get().and_then(Result::err));
    let saved = move || matches!(update.value().get(), Some(Ok(_)));
    view! {
        <Transition fallback=|| loading("the wallet")>
            {move || Suspend::new(async move {
                match summary.await {
                    Ok(w) => view! { <WalletSummary wallet=w/> }.into_any(),
                    Err(e) => failed(e),
                }
            })}
        </Transition>
        <section class="card" aria-labelledby="limits-heading">
            <h2 id="limits-heading">"Limits"</h2>
            <Transition fallback=|| loading("the limits")>
                {move || Suspend::new(async move {
                    match limits.await {
                        Ok(w) => view! { <WalletForm id wallet=w update/> }.into_any(),
                        Err(e) => failed(e),
                    }
                })}
            </Transition>
            <FormError error/>
            {move || saved().then(|| view! { <p class="saved" role="status" id="wallet-saved">"Saved."</p> })}
        </section>
        <section class="card" aria-labelledby="history-heading">
            <h2 id="history-heading">"History: held against settled"</h2>
            <p class="muted small">
                "Before each call AEGIS holds what it may cost (a metered LLM call: its ceiling); after it, "
                "the hold is settled at what it did cost and the rest released."
            </p>
            <WalletHistory id/>
        </section>
    }
}

/// The wallet's latest holds (one page), live.
#[component]
fn WalletHistory(id: Uuid) -> impl IntoView {
    let tick = Live::get().map(|l| l.tick);
    let history = Resource::new(move || tick.map(|t| t.get()), move |_| wallet_history(id, None));
    view! {
        <Transition fallback=|| loading("the history")>
            {move || Suspend::new(async move {
                match history.await {
                    Ok(page) if page.items.is_empty() => view! {
                        <p class="empty muted" id="wallet-history-empty">"No calls have held anything yet."</p>
                    }.into_any(),
                    Ok(page) => view! { <HistoryTable items=page.items more=page.next_cursor.is_some()/> }.into_any(),
                    Err(e) => failed(e),
                }
            })}
        </Transition>
    }
}

#[component]
fn HistoryTable(items: Vec<WalletEntry>, more: bool) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table class="table" id="wallet-history">
                <thead>
                    <tr>
                        <th scope="col">"When"</th>
                        <th scope="col">"Status"</th>
                        <th scope="col" class="num">"Held"</th>
                        <th scope="col" class="num">"Settled"</th>
                        <th scope="col">"Settled of held"</th>
                        <th scope="col">"Call"</th>
                    </tr>
                </thead>
                <tbody>
                    {items.into_iter().map(|e| {
                        let settled = e.settled_micros.unwrap_or(0);
                        let pct = if e.held_micros > 0 {
                            (i128::from(settled) * 100 / i128::from(e.held_micros)).clamp(0, 100) as i64
                        } else if settled > 0 { 100 } else { 0 };
                        view! {
                            <tr data-request=e.request_id.clone() data-status=e.status.clone()>
                                <td class="small">{e.created_at.format("%Y-%m-%d %H:%M:%S").to_string()}</td>
                                <td><span class=format!("badge {}", e.status)>{e.status.clone()}</span></td>
                                <td class="num" data-col="held">{dollars(e.held_micros)}</td>
                                <td class="num" data-col="settled">{e.settled_micros.map(dollars).unwrap_or_else(|| "—".into())}</td>
                                <td>
                                    <div class="meter" title=format!("{pct}% of the hold")><span style=format!("width:{pct}%")></span></div>
                                </td>
                                <td class="small"><a href=format!("/audit?request_id={}", e.request_id)><code>{e.request_id.clone()}</code></a></td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
        {more.then(|| view! { <p class="muted small">"The latest 50 holds; GET /api/agents/{id}/wallet/history pages through the rest."</p> })}
    }
}

#[component]
fn WalletSummary(wallet: WalletView) -> impl IntoView {
    let w = wallet;
    let meter = |spent: i64, limit: i64| {
        let pct = if limit > 0 { (spent.saturating_mul(100) / limit).clamp(0, 100) } else { 0 };
        let of = if limit > 0 { format!("of {}", dollars(limit)) } else { "no limit".into() };
        view! {
            <div class="meter" role="presentation"><span style=format!("width:{pct}%")></span></div>
            <span class="muted small">{of}</span>
        }
    };
    view! {
        <div class="cards wallet-cards" id="wallet-summary">
            <div class="card stat">
                <span class="label">"Spent today"</span>
                <span class="value" id="wallet-daily-spent">{dollars(w.daily_spent_micros)}</span>
                {meter(w.daily_spent_micros, w.daily_limit_micros)}
                <span class="muted small">{format!("Resets {}", when(w.daily_resets_at))}</span>
            </div>
            <div class="card stat">
                <span class="label">"Spent this month"</span>
                <span class="value">{dollars(w.monthly_spent_micros)}</span>
                {meter(w.monthly_spent_micros, w.monthly_limit_micros)}
                <span class="muted small">{format!("Resets {}", when(w.monthly_resets_at))}</span>
            </div>
            <div class="card stat">
                <span class="label">"Reserved"</span>
                <span class="value">{dollars(w.reserved_micros)}</span>
                <span class="muted small">"Held for calls in flight."</span>
            </div>
        </div>
    }
}

#[component]
fn WalletForm(id: Uuid, wallet: WalletView, update: ServerAction<UpdateWallet>) -> impl IntoView {
    let w = wallet;
    let amount = |m: i64| if m > 0 { format_units(m) } else { String::new() };
    view! {
        <ActionForm action=update attr:class="form grid" attr:id="wallet-form">
            <input type="hidden" name="id" value=id.to_string()/>
            <div class="field">
                <label for="wallet-daily">"Daily limit (USD)"</label>
                <input id="wallet-daily" name="daily_limit" inputmode="decimal" placeholder="no limit"
                    value=amount(w.daily_limit_micros)/>
            </div>
            <div class="field">
                <label for="wallet-monthly">"Monthly limit (USD)"</label>
                <input id="wallet-monthly" name="monthly_limit" inputmode="decimal" placeholder="no limit"
                    value=amount(w.monthly_limit_micros)/>
            </div>
            <div class="field">
                <label for="wallet-tz">"Time zone"</label>
                <input id="wallet-tz" name="timezone" value=w.timezone.clone() placeholder="Europe/Paris"
                    autocomplete="off"/>
                <span class="hint muted small">"The calendar days and months the limits follow (IANA name)."</span>
            </div>
            <div class="field">
                <label for="wallet-alert">"Alert at (% of a limit)"</label>
                <input id="wallet-alert" name="alert_threshold_pct" inputmode="numeric" placeholder="off"
                    value=w.alert_threshold_pct.filter(|p| *p > 0).map(|p| p.to_string()).unwrap_or_default()/>
            </div>
            <div class="field wide">
                <p class="hint muted small">"Leave a limit blank for no limit; blank alert means no alerts."</p>
                <button type="submit" class="button primary" disabled=move || update.pending().get()>"Save limits"</button>
            </div>
        </ActionForm>
    }
}

/// Every vault secret, and whether this agent may have it injected.
#[component]
fn SecretsTab(id: Uuid) -> impl IntoView {
    let grant = ServerAction::<SetSecretGrant>::new();
    let secrets = Resource::new(move || grant.version().get(), |_| list_secrets());
    let error = Signal::derive(move || grant.value().get().and_then(Result::err));
    view! {
        <section class="card" aria-labelledby="agent-secrets-heading">
            <div class="section-head">
                <h2 id="agent-secrets-heading">"Secrets this agent may use"</h2>
                <a class="button small" href="/secrets">"Manage the vault"</a>
            </div>
            <FormError error/>
            <Transition fallback=|| loading("secrets")>
                {move || Suspend::new(async move {
                    match secrets.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty muted" id="agent-secrets-empty">
                                "Your vault is empty. "<a href="/secrets">"Add a secret"</a>
                                " and grant it to this agent; AEGIS injects it into the agent's calls to its allowed hosts."
                            </p>
                        }.into_any(),
                        Ok(list) => view! {
                            <div class="table-wrap">
                                <table class="table" id="agent-secrets">
                                    <thead><tr>
                                        <th scope="col">"Secret"</th><th scope="col">"Hosts"</th>
                                        <th scope="col">"Access"</th><th scope="col"><span class="sr-only">"Change"</span></th>
                                    </tr></thead>
                                    <tbody>
                                        {list.into_iter().map(|s| {
                                            let granted = s.agents.contains(&id);
                                            let button_label = format!("{} {}", if granted { "Revoke" } else { "Grant" }, s.name);
                                            let (state, label, class) = if granted {
                                                ("revoke", "Revoke", "button small")
                                            } else {
                                                ("grant", "Grant", "button small primary")
                                            };
                                            view! {
                                                <tr data-secret=s.name.clone()>
                                                    <td class="name">{s.name.clone()}</td>
                                                    <td class="small wrap">{s.allowed_hosts.join(", ")}</td>
                                                    <td>{if granted {
                                                        view! { <span class="badge allow">"may use"</span> }.into_any()
                                                    } else {
                                                        view! { <span class="badge muted-badge">"not granted"</span> }.into_any()
                                                    }}</td>
                                                    <td class="actions">
                                                        <ActionForm action=grant attr:class="inline">
                                                            <input type="hidden" name="secret" value=s.id.to_string()/>
                                                            <input type="hidden" name="agent" value=id.to_string()/>
                                                            <input type="hidden" name="grant" value=state/>
                                                            <button type="submit" class=class disabled=move || grant.pending().get()
                                                                aria-label=button_label>{label}</button>
                                                        </ActionForm>
                                                    </td>
                                                </tr>
                                            }
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        }.into_any(),
                        Err(e) => failed(e),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn PolicyTab(id: Uuid, set_policy: ServerAction<SetAgentPolicy>) -> impl IntoView {
    let policies = Resource::new(|| (), |_| list_policies());
    // The form shows the saved policy as of opening and each save; not re-read on
    // live refreshes, which would reset a choice not yet saved.
    let agent = Resource::new(move || set_policy.version().get(), move |_| get_agent(id));
    let error = Signal::derive(move || set_policy.value().get().and_then(Result::err));
    let saved = move || matches!(set_policy.value().get(), Some(Ok(_)));
    view! {
        <section class="card" aria-labelledby="policy-heading">
            <h2 id="policy-heading">"Policy"</h2>
            <p class="muted">"The Rego policy that decides each of this agent's calls: allow, deny or wait for approval."</p>
            <Transition fallback=|| loading("policies")>
                {move || Suspend::new(async move {
                    let current = agent.await.map(|a| a.policy).unwrap_or_default();
                    match policies.await {
                        Ok(list) => view! {
                            <ActionForm action=set_policy attr:class="form policy-form" attr:id="policy-form">
                                <input type="hidden" name="id" value=id.to_string()/>
                                <label for="agent-policy-select">"Policy"</label>
                                <select id="agent-policy-select" name="policy">
                                    {list.into_iter().map(|p| {
                                        let selected = p.name == current;
                                        let label = match &p.description {
                                            Some(d) => format!("{} — {d}", p.name),
                                            None => p.name.clone(),
                                        };
                                        view! { <option value=p.name.clone() selected=selected>{label}</option> }
                                    }).collect_view()}
                                </select>
                                <button type="submit" class="button primary" disabled=move || set_policy.pending().get()>
                                    "Save policy"
                                </button>
                            </ActionForm>
                        }.into_any(),
                        Err(e) => failed(e),
                    }
                })}
            </Transition>
            <FormError error/>
            {move || saved().then(|| view! { <p class="saved" role="status">"Saved."</p> })}
        </section>
        <McpTools id set_policy/>
    }
}

/// The MCP tools the agent sees through `/mcp`: its MCP connections' tools that its
/// policy does not deny outright, read again when the policy changes.
#[component]
fn McpTools(id: Uuid, set_policy: ServerAction<SetAgentPolicy>) -> impl IntoView {
    let tools = Resource::new(move || set_policy.version().get(), move |_| agent_tools(id));
    view! {
        <section class="card" aria-labelledby="mcp-tools-heading" id="mcp-tools">
            <h2 id="mcp-tools-heading">"MCP tools"</h2>
            <p class="muted">
                "What this agent sees at "<code>"/mcp"</code>": each MCP connection's tools, named "
                <code>"<connection>__<tool>"</code>", without those its policy denies outright."
            </p>
            <Transition fallback=|| loading("MCP tools")>
                {move || Suspend::new(async move {
                    match tools.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty muted" id="mcp-tools-empty">
                                "No MCP tools — "<a href="/connections">"add an MCP connection"</a>
                            </p>
                        }.into_any(),
                        Ok(list) => view! {
                            <ul class="mcp-tools" id="mcp-tools-list">
                                {list.into_iter().map(|t| view! {
                                    <li data-tool=t.name.clone()>
                                        <code class="name">{t.name.clone()}</code>
                                        {t.description.map(|d| view! { <span class="muted small">{" — "}{d}</span> })}
                                    </li>
                                }).collect_view()}
                            </ul>
                        }.into_any(),
                        Err(e) => failed(e),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn TrustTab(id: Uuid) -> impl IntoView {
    let tick = Live::get().map(|l| l.tick);
    let trust = Resource::new(move || tick.map(|t| t.get()), move |_| agent_trust(id));
    view! {
        <Transition fallback=|| loading("trust")>
            {move || Suspend::new(async move {
                match trust.await {
                    Ok(t) => view! {
                        <div class="cards">
                            <div class="card stat"><span class="label">"Trust score"</span>
                                <span class="value" id="trust-score">{t.score}</span>
                                <span class="muted small">"0 to 1000; new agents start at 500."</span></div>
                            <div class="card stat"><span class="label">"Tier"</span>
                                <span class="value"><span class=format!("badge tier {}", t.tier)>{t.tier.clone()}</span></span>
                                <span class="muted small">"Policies can ask for approval below a tier."</span></div>
                        </div>
                        <section class="card" aria-labelledby="trust-heading">
                            <h2 id="trust-heading">"History"</h2>
                            {if t.history.is_empty() {
                                view! {
                                    <p class="empty muted" id="trust-empty">
                                        "No changes yet. Successful calls raise the score; denials, blocked hosts and breaker trips lower it."
                                    </p>
                                }.into_any()
                            } else {
                                view! { <TrustHistory history=t.history/> }.into_any()
                            }}
                        </section>
                    }.into_any(),
                    Err(e) => failed(e),
                }
            })}
        </Transition>
    }
}

/// The score over time as server-rendered SVG (no chart library), with the same
/// points as a table for screen readers and anyone who prefers numbers.
#[component]
fn TrustHistory(history: Vec<TrustEventView>) -> impl IntoView {
    let svg = trust_chart_svg(&history);
    view! {
        <div class="chart-wrap" inner_html=svg></div>
        <details class="chart-table">
            <summary>"Show as a table"</summary>
            <div class="table-wrap">
                <table class="table" id="trust-table">
                    <thead><tr>
                        <th scope="col">"Time"</th><th scope="col">"Reason"</th>
                        <th scope="col">"Change"</th><th scope="col">"Score"</th>
                    </tr></thead>
                    <tbody>
                        {history.into_iter().map(|e| view! {
                            <tr>
                                <td class="small">{when(e.at)}</td>
                                <td>{e.reason.replace('_', " ")}</td>
                                <td class=if e.delta < 0 { "delta down" } else { "delta up" }>{format!("{:+}", e.delta)}</td>
                                <td>{e.score_after}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
        </details>
    }
}

/// A line of `score_after` against time (oldest left), on a 0–1000 scale with the
/// tier boundaries marked. Only numbers and fixed words go into the markup.
fn trust_chart_svg(history: &[TrustEventView]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 220.0;
    const PAD_L: f64 = 40.0;
    const PAD_R: f64 = 12.0;
    const PAD_T: f64 = 12.0;
    const PAD_B: f64 = 28.0;
    let mut points: Vec<&TrustEventView> = history.iter().collect();
    points.sort_by_key(|e| e.at);
    let (first, last) = match (points.first(), points.last()) {
        (Some(f), Some(l)) => (f.at.timestamp_millis(), l.at.timestamp_millis()),
        _ => return String::new(),
    };
    let span = (last - first).max(1) as f64;
    let n = points.len();
    let x = |i: usize, at: i64| {
        let share = if last > first {
            (at - first) as f64 / span
        } else if n > 1 {
            i as f64 / (n - 1) as f64
        } else {
            1.0
        };
        PAD_L + share * (W - PAD_L - PAD_R)
    };
    let y = |score: i32| PAD_T + (1.0 - f64::from(score.clamp(0, 1000)) / 1000.0) * (H - PAD_T - PAD_B);
    let mut line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{:.1},{:.1}", x(i, e.at.timestamp_millis()), y(e.score_after)))
        .collect();
    if n == 1 {
        // A single change still draws as a level line across the chart.
        line.insert(0, format!("{PAD_L:.1},{:.1}", y(points[0].score_after)));
    }
    // The tier boundaries.
    let grid: String = [300, 500, 700, 900]
        .iter()
        .map(|s| {
            format!(
                r#"<line class="grid" x1="{PAD_L}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{s}</text>"#,
                W - PAD_R,
                PAD_L - 6.0,
                y(*s) + 4.0,
                y = y(*s)
            )
        })
        .collect();
    let dots: String = points
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let class = if e.delta < 0 { "down" } else { "up" };
            format!(
                r#"<circle class="{class}" cx="{:.1}" cy="{:.1}" r="3"/>"#,
                x(i, e.at.timestamp_millis()),
                y(e.score_after)
            )
        })
        .collect();
    let (lo, hi) = (points[0], points[n - 1]);
    let summary = format!(
        "Trust score from {} ({}) to {} ({}), {n} changes.",
        lo.score_after,
        when(lo.at),
        hi.score_after,
        when(hi.at)
    );
    format!(
        r#"<svg class="trust-chart" id="trust-chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="trust-chart-title trust-chart-desc" preserveAspectRatio="xMidYMid meet"><title id="trust-chart-title">Trust score history</title><desc id="trust-chart-desc">{summary}</desc>{grid}<polyline class="line" points="{}"/>{dots}<text class="axis" x="{PAD_L}" y="{}">{}</text><text class="axis" x="{}" y="{}" text-anchor="end">{}</text></svg>"#,
        line.join(" "),
        H - 8.0,
        lo.at.format("%b %d %H:%M"),
        W - PAD_R,
        H - 8.0,
        hi.at.format("%b %d %H:%M"),
    )
}

#[component]
fn KeysTab(id: Uuid, agent: AgentResource, rotate: ServerAction<RotateAgentKey>) -> impl IntoView {
    // A key rotated by a plain form post (no WebAssembly) arrives after the redirect.
    let flashed = Resource::new(|| (), |_| take_new_key());
    let error = Signal::derive(move || rotate.value().get().and_then(Result::err));
    view! {
        <section class="card" aria-labelledby="keys-heading">
            <h2 id="keys-heading">"API key"</h2>
            <Transition fallback=|| loading("the key")>
                {move || Suspend::new(async move {
                    agent.await.ok().map(|a| view! {
                        <dl class="facts">
                            <dt>"Current key"</dt>
                            <dd><code id="key-prefix">{a.key_prefix.clone().map(|p| format!("{p}…")).unwrap_or_else(|| "none".into())}</code></dd>
                            <dt>"Last used"</dt><dd>{a.last_seen_at.map(when).unwrap_or_else(|| "never".into())}</dd>
                        </dl>
                    })
                })}
            </Transition>
            <p class="muted">"Rotating issues a new key and stops the current one at once: update the agent before its next call."</p>
            <ActionForm action=rotate attr:class="inline" attr:id="rotate-form">
                <input type="hidden" name="id" value=id.to_string()/>
                <button type="submit" class="button danger" disabled=move || rotate.pending().get()>"Rotate key"</button>
            </ActionForm>
            <FormError error/>
            {move || rotate.value().get().and_then(Result::ok).map(|k| view! {
                <OneTimeKey title="New key".to_owned() key=k.api_key/>
            })}
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    flashed.await.ok().flatten().filter(|c| c.agent.id == id).map(|c| view! {
                        <OneTimeKey title="New key".to_owned() key=c.api_key/>
                    })
                })}
            </Transition>
        </section>
    }
}
