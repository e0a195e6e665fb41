//! Approvals: the live queue of requests a policy held for a human, and the decided
//! history. A card shows what identifies the call (method, the normalised target
//! with its host in ASCII and Unicode, header names, body size); "Show the full
//! request" loads that one approval: every header (credentials and the injected
//! secret masked) and the whole body, scrollable; for an MCP tool call, first the
//! tool and the arguments it would be called with.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

use super::FormError;
use crate::live::Live;
use crate::model::{ApprovalMcp, ApprovalStatus, ApprovalView};
use crate::money::format_units;
use crate::rpc::{DecideApproval, get_approval, list_approvals};

const FILTERS: [(&str, &str); 5] = [
    ("pending", "Pending"),
    ("approved", "Approved"),
    ("rejected", "Rejected"),
    ("expired", "Expired"),
    ("all", "All"),
];

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[component]
pub fn ApprovalsPage() -> impl IntoView {
    let decide = ServerAction::<DecideApproval>::new();
    let query = use_query_map();
    let status = move || query.read().get("status").unwrap_or_else(|| "pending".to_owned());
    let cursor = move || query.read().get("cursor");
    let tick = Live::get().map(|l| l.tick);
    let approvals = Resource::new(
        move || (status(), cursor(), decide.version().get(), tick.map(|t| t.get())),
        |(status, cursor, _, _)| list_approvals(Some(status), cursor),
    );
    let error = Signal::derive(move || decide.value().get().and_then(Result::err));
    view! {
        <Title text="Approvals"/>
        <div class="page-head">
            <h1>"Approvals"</h1>
            <p class="muted">"Requests your policies held for a human. Approving performs exactly the stored request, once."</p>
        </div>
        <nav class="tabs" aria-label="Filter approvals">
            {FILTERS.into_iter().map(|(value, label)| view! {
                <a href=format!("/approvals?status={value}")
                    aria-current=move || (status() == value).then_some("page")>{label}</a>
            }).collect_view()}
        </nav>
        <FormError error/>
        <Transition fallback=|| view! { <p class="muted">"Loading approvals…"</p> }>
            {move || Suspend::new(async move {
                match approvals.await {
                    Ok(page) if page.items.is_empty() => view! {
                        <div class="card empty" id="approvals-empty">
                            <h2>"Nothing here"</h2>
                            <p class="muted">
                                "When a policy answers require_approval, the agent's request waits here \
                                 and appears at once, without a reload."
                            </p>
                        </div>
                    }.into_any(),
                    Ok(page) => {
                        let next = page.next_cursor.map(|c| format!("/approvals?status={}&cursor={c}", status()));
                        view! {
                            <ul class="approvals" id="approvals-list">
                                {page.items.into_iter().map(|a| view! { <ApprovalCard approval=a decide/> }).collect_view()}
                            </ul>
                            {next.map(|href| view! { <a class="button ghost" href=href>"Next page →"</a> })}
                        }.into_any()
                    }
                    Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// One approval, where a notification's link points (`/approvals/{id}`): the same
/// card as the queue, with its buttons while it waits. Signing in is required.
#[component]
pub fn ApprovalPage() -> impl IntoView {
    let decide = ServerAction::<DecideApproval>::new();
    let params = use_params_map();
    let tick = Live::get().map(|l| l.tick);
    let approval = Resource::new(
        move || (params.read().get("id"), decide.version().get(), tick.map(|t| t.get())),
        |(id, _, _)| async move {
            match id.and_then(|id| id.parse::<uuid::Uuid>().ok()) {
                Some(id) => get_approval(id).await,
                None => Err(crate::error::AppError::not_found("approval")),
            }
        },
    );
    let error = Signal::derive(move || decide.value().get().and_then(Result::err));
    view! {
        <Title text="Approval"/>
        <div class="page-head">
            <h1>"Approval"</h1>
            <p class="muted"><a href="/approvals">"← All approvals"</a></p>
        </div>
        <FormError error/>
        <Transition fallback=|| view! { <p class="muted">"Loading the approval…"</p> }>
            {move || Suspend::new(async move {
                match approval.await {
                    Ok(a) => view! { <ul class="approvals" id="approval-one"><ApprovalCard approval=a decide/></ul> }.into_any(),
                    Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn ApprovalCard(approval: ApprovalView, decide: ServerAction<DecideApproval>) -> impl IntoView {
    let a = approval;
    let id = a.id.to_string();
    let status = a.status.as_str();
    let pending = a.status == ApprovalStatus::Pending;
    let headers = if a.header_names.is_empty() { "none".to_owned() } else { a.header_names.join(", ") };
    let outcome = a.outcome.clone().map(|o| {
        let upstream = o.body["upstream"]["status"].as_u64();
        let decision = o.body["decision"].as_str().unwrap_or_default().to_owned();
        match upstream {
            Some(code) => format!("performed: upstream answered {code}"),
            None => format!("not performed: {decision} at {}", o.body["stage"].as_str().unwrap_or("?")),
        }
    });
    view! {
        <li class=format!("card approval {status}") data-approval=id.clone()>
            <div class="approval-head">
                <span class=format!("badge {status}")>{status}</span>
                <strong class="agent">{a.agent_name.clone()}</strong>
                <span class="muted small">{format!("trust {} at request", a.trust_at_request)}</span>
                <span class="cost">{format!("${}", format_units(a.cost_micros))}</span>
            </div>
            <p class="request"><code class="method">{a.method.clone()}</code>" "<code class="url">{a.target.as_ref().map(|t| t.url.clone()).unwrap_or_else(|| a.url.clone())}</code></p>
            {a.target.clone().map(|t| {
                let unicode = (t.host_unicode != t.host).then(|| format!(" (shown in Unicode: {})", t.host_unicode));
                view! {
                    <p class="target small">"Host actually contacted: "<strong class="host">{t.host}</strong>
                        {unicode}{t.port.map(|p| format!(", port {p}"))}</p>
                }
            })}
            <dl class="facts">
                <dt>"Action"</dt><dd>{a.action_label.clone().unwrap_or_else(|| "—".into())}</dd>
                <dt>"Secret"</dt><dd>{a.secret_name.clone().unwrap_or_else(|| "none".into())}</dd>
                <dt>"Headers"</dt><dd>{headers}</dd>
                <dt>"Why"</dt><dd>{if a.policy_reasons.is_empty() { "the policy asked for approval".to_owned() } else { a.policy_reasons.join("; ") }}</dd>
                <dt>"Asked"</dt><dd>{when(a.created_at)}</dd>
                <dt>"Expires"</dt><dd>{a.expires_at.map(when).unwrap_or_else(|| "never".into())}</dd>
                {a.decided_at.map(|t| view! { <dt>"Decided"</dt><dd>{when(t)}</dd> })}
                {a.decision_reason.clone().map(|r| view! { <dt>"Reason"</dt><dd>{r}</dd> })}
                {outcome.map(|o| view! { <dt>"Outcome"</dt><dd class="outcome">{o}</dd> })}
            </dl>
            <FullRequest id=a.id body_bytes=a.body_bytes/>
            {pending.then(|| {
                let (approve_id, reject_id) = (id.clone(), id.clone());
                view! {
                    <div class="decide">
                        <ActionForm action=decide attr:class="inline">
                            <input type="hidden" name="id" value=approve_id/>
                            <input type="hidden" name="decision" value="approve"/>
                            <button type="submit" class="button primary" disabled=move || decide.pending().get()>"Approve"</button>
                        </ActionForm>
                        <ActionForm action=decide attr:class="inline reject">
                            <input type="hidden" name="id" value=reject_id.clone()/>
                            <input type="hidden" name="decision" value="reject"/>
                            <label class="sr-only" for=format!("reason-{reject_id}")>"Reason for rejecting"</label>
                            <input id=format!("reason-{reject_id}") name="reason" maxlength="500" placeholder="Reason (shown to the agent)"/>
                            <button type="submit" class="button danger" disabled=move || decide.pending().get()>"Reject"</button>
                        </ActionForm>
                    </div>
                }
            })}
        </li>
    }
}

/// The whole request, fetched (and decrypted) only when the sponsor asks for it.
#[component]
fn FullRequest(id: uuid::Uuid, body_bytes: u64) -> impl IntoView {
    let load = Action::new(move |_: &()| get_approval(id));
    view! {
        <details class="full-request" on:toggle=move |_| {
            if load.value().get_untracked().is_none() && !load.pending().get_untracked() {
                load.dispatch(());
            }
        }>
            <summary>{format!("Show the full request (headers, body of {body_bytes} bytes)")}</summary>
            {move || match load.value().get() {
                None => view! { <p class="muted">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                Some(Ok(full)) => {
                    let mcp = full.mcp.map(|m| view! { <McpCallView call=m/> });
                    let headers = full.headers.unwrap_or_default();
                    let body = full
                        .body
                        .or_else(|| full.body_base64.map(|b| format!("(not UTF-8; base64) {b}")))
                        .unwrap_or_default();
                    view! {
                        {mcp}
                        <table class="headers">
                            <thead><tr><th>"Header"</th><th>"Value"</th></tr></thead>
                            <tbody>
                                {headers.into_iter().map(|h| view! {
                                    <tr class:masked=h.masked>
                                        <td><code>{h.name}</code></td>
                                        <td><code>{h.value}</code>{h.injected.then_some(" (injected by AEGIS)")}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                        <pre class="body" style="max-height: 24rem; overflow: auto; white-space: pre-wrap;">{body}</pre>
                    }.into_any()
                }
            }}
        </details>
    }
}

/// The MCP tool call an approval holds: which tool, on which connection, with which
/// arguments (exactly what is sent upstream if it is approved).
#[component]
fn McpCallView(call: ApprovalMcp) -> impl IntoView {
    let tool = call.tool.clone().unwrap_or_else(|| call.method.clone());
    let arguments = serde_json::to_string_pretty(&call.arguments).unwrap_or_default();
    view! {
        <div class="mcp-call">
            <dl class="facts">
                <dt>"MCP tool"</dt>
                <dd><code class="mcp-tool">{format!("{}__{tool}", call.server)}</code></dd>
                <dt>"Connection"</dt><dd class="mcp-server">{call.server.clone()}</dd>
            </dl>
            <p class="small">"Arguments"</p>
            <pre class="mcp-arguments code" style="max-height: 16rem; overflow: auto; white-space: pre-wrap;">{arguments}</pre>
        </div>
    }
}
