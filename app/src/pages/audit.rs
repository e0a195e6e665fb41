//! Audit: the sponsor's hash-chained records, filtered and paginated on the server,
//! each with its hash and the previous record's; "Verify chain" walks the whole
//! chain; "Download CSV" exports the current filter.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::live::Live;
use crate::model::{AuditQuery, AuditRecord};
use crate::money::format_units;
use crate::rpc::{VerifyAudit, list_audit};

const FILTER_KEYS: [&str; 4] = ["agent", "kind", "decision", "request_id"];

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let param = move |k: &str| query.read().get(k).filter(|v| !v.is_empty());
    let filter = move || AuditQuery {
        agent: param("agent"),
        kind: param("kind"),
        decision: param("decision"),
        request_id: param("request_id"),
        cursor: param("cursor"),
        ..AuditQuery::default()
    };
    // The filter as a query string (without the cursor), for the CSV link and paging.
    let filter_qs = move || {
        FILTER_KEYS
            .iter()
            .filter_map(|k| param(k).map(|v| format!("{k}={}", encode(&v))))
            .collect::<Vec<_>>()
            .join("&")
    };
    let tick = Live::get().map(|l| l.tick);
    let records = Resource::new(
        move || (filter(), tick.map(|t| t.get())),
        |(f, _)| list_audit(f.agent, f.kind, f.decision, f.request_id, f.cursor),
    );
    let verify = ServerAction::<VerifyAudit>::new();
    view! {
        <Title text="Audit"/>
        <div class="page-head">
            <h1>"Audit log"</h1>
            <p class="muted">"Every decision, hash-chained: each record carries the hash of the one before it."</p>
        </div>
        <section class="card">
            <form method="get" action="/audit" class="form grid filters" id="audit-filters">
                <div class="field">
                    <label for="f-kind">"Kind"</label>
                    <input id="f-kind" name="kind" placeholder="proxy.outcome" value=move || param("kind").unwrap_or_default()/>
                </div>
                <div class="field">
                    <label for="f-decision">"Decision"</label>
                    <select id="f-decision" name="decision">
                        {["", "allow", "deny", "pending", "error"].into_iter().map(|d| view! {
                            <option value=d selected=move || param("decision").unwrap_or_default() == d>
                                {if d.is_empty() { "any" } else { d }}
                            </option>
                        }).collect_view()}
                    </select>
                </div>
                <div class="field">
                    <label for="f-agent">"Agent id"</label>
                    <input id="f-agent" name="agent" value=move || param("agent").unwrap_or_default()/>
                </div>
                <div class="field">
                    <label for="f-request">"Request id"</label>
                    <input id="f-request" name="request_id" value=move || param("request_id").unwrap_or_default()/>
                </div>
                <div class="field wide actions-row">
                    <button type="submit" class="button primary">"Filter"</button>
                    <a class="button" href="/audit">"Clear"</a>
                    <a class="button" id="audit-csv" href=move || format!("/audit/export.csv?{}", filter_qs()) download="aegis-audit.csv">
                        "Download CSV"
                    </a>
                </div>
            </form>
            <ActionForm action=verify attr:class="inline verify">
                <button type="submit" class="button" disabled=move || verify.pending().get()>"Verify chain"</button>
                {move || verify.value().get().map(|r| match r {
                    Ok(v) if v.valid => view! {
                        <span class="badge allow" id="verify-result">{format!("valid: {} records verified", v.checked)}</span>
                    }.into_any(),
                    Ok(v) => view! {
                        <span class="badge deny" id="verify-result">
                            {format!("broken at seq {}: {}", v.first_bad_seq.unwrap_or_default(), v.reason.unwrap_or_default())}
                        </span>
                    }.into_any(),
                    Err(e) => view! { <span class="badge deny" id="verify-result">{e.message}</span> }.into_any(),
                })}
            </ActionForm>
        </section>
        <Transition fallback=|| view! { <p class="muted">"Loading records…"</p> }>
            {move || Suspend::new(async move {
                match records.await {
                    Ok(page) if page.items.is_empty() => view! {
                        <div class="card empty"><h2>"No records"</h2>
                        <p class="muted">"Nothing matches this filter yet. Agent calls, approvals and changes to agents all land here."</p></div>
                    }.into_any(),
                    Ok(page) => {
                        let next = page.next_cursor.map(|c| {
                            let qs = filter_qs();
                            if qs.is_empty() { format!("/audit?cursor={c}") } else { format!("/audit?{qs}&cursor={c}") }
                        });
                        view! {
                            <div class="table-wrap card">
                                <table class="table" id="audit-table">
                                    <thead><tr>
                                        <th scope="col">"Seq"</th><th scope="col">"Time"</th><th scope="col">"Kind"</th>
                                        <th scope="col">"Decision"</th><th scope="col">"Request"</th><th scope="col">"Cost"</th>
                                        <th scope="col">"Hash"</th>
                                    </tr></thead>
                                    <tbody>{page.items.into_iter().map(|r| view! { <AuditRow record=r/> }).collect_view()}</tbody>
                                </table>
                            </div>
                            {next.map(|href| view! { <a class="button ghost" href=href>"Older records →"</a> })}
                        }.into_any()
                    }
                    Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn AuditRow(record: AuditRecord) -> impl IntoView {
    let r = record;
    let decision = r.decision.clone().unwrap_or_default();
    let target = match (&r.method, &r.host) {
        (Some(m), Some(h)) => format!("{m} {h}{}", r.path.clone().unwrap_or_default()),
        _ => "—".into(),
    };
    view! {
        <tr data-seq=r.seq>
            <td>{r.seq}</td>
            <td class="small">{r.at.format("%Y-%m-%d %H:%M:%S").to_string()}</td>
            <td><code>{r.kind.clone()}</code>{r.stage.clone().map(|s| view! { <div class="muted small">{format!("stage {s}")}</div> })}</td>
            <td>{(!decision.is_empty()).then(|| view! { <span class=format!("badge {decision}")>{decision.clone()}</span> })}</td>
            <td class="small wrap">{target}{r.status.map(|s| format!(" → {s}"))}</td>
            <td>{(r.cost_micros > 0).then(|| format!("${}", format_units(r.cost_micros)))}</td>
            <td>
                <details class="hashes">
                    <summary><code>{r.hash.chars().take(12).collect::<String>()}"…"</code></summary>
                    <dl class="facts">
                        <dt>"hash"</dt><dd><code>{r.hash.clone()}</code></dd>
                        <dt>"prev_hash"</dt><dd><code>{r.prev_hash.clone()}</code></dd>
                        {r.request_id.clone().map(|id| view! { <dt>"request"</dt><dd><code>{id}</code></dd> })}
                        {r.detail.clone().map(|d| view! { <dt>"detail"</dt><dd><code class="wrap">{d}</code></dd> })}
                    </dl>
                </details>
            </td>
        </tr>
    }
}
