//! Policies: the built-in ones and the sponsor's own, their Rego source, an editor
//! that shows the compiler's message inline, and a playground that asks a policy
//! about a sample action (an HTTP call, or an MCP tool call) without performing it.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use uuid::Uuid;

use super::FormError;
use crate::model::{PolicySummary, PolicyVerdict, PolicyView};
use crate::rpc::{EvaluatePolicy, SavePolicy, get_policy, list_agents, list_policies};

/// What a new policy starts from: the shape every policy needs.
const TEMPLATE: &str = r#"package aegis

import rego.v1

default decision := "deny"

decision := "allow" if input.action.method in {"GET", "HEAD"}

reasons contains "only reads are allowed" if decision == "deny"
"#;

#[component]
pub fn PoliciesPage() -> impl IntoView {
    let save = ServerAction::<SavePolicy>::new();
    let query = use_query_map();
    let selected = move || query.read().get("id").and_then(|id| id.parse::<Uuid>().ok());
    let policies = Resource::new(move || save.version().get(), |_| list_policies());
    view! {
        <Title text="Policies"/>
        <div class="page-head">
            <h1>"Policies"</h1>
            <p class="muted">
                "Rego in "<code>"package aegis"</code>" decides every agent call: "
                <code>"allow"</code>", "<code>"deny"</code>" or "<code>"require_approval"</code>"."
            </p>
        </div>
        <div class="policies-layout">
            <section class="card" aria-labelledby="policies-heading">
                <h2 id="policies-heading">"All policies"</h2>
                <Transition fallback=|| view! { <p class="muted">"Loading policies…"</p> }>
                    {move || Suspend::new(async move {
                        match policies.await {
                            Ok(list) => view! { <PolicyList list selected=selected()/> }.into_any(),
                            Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                        }
                    })}
                </Transition>
                <a class="button" href="/policies" id="new-policy">"New policy"</a>
            </section>
            <PolicyEditor save selected=Signal::derive(selected)/>
        </div>
        <Playground policies/>
    }
}

#[component]
fn PolicyList(list: Vec<PolicySummary>, selected: Option<Uuid>) -> impl IntoView {
    view! {
        <ul class="policy-list" id="policy-list">
            {list.into_iter().map(|p| {
                let current = (Some(p.id) == selected).then_some("page");
                view! {
                    <li data-policy=p.name.clone()>
                        <a href=format!("/policies?id={}", p.id) aria-current=current>
                            <span class="name">{p.name.clone()}</span>
                            {if p.builtin {
                                view! { <span class="badge builtin">"built-in"</span> }.into_any()
                            } else {
                                view! { <span class="badge own">"yours"</span> }.into_any()
                            }}
                        </a>
                        <span class="muted small">{p.description.clone().unwrap_or_default()}</span>
                    </li>
                }
            }).collect_view()}
        </ul>
    }
}

/// One policy's source: read-only for built-ins, a new version for your own, or a
/// new policy when none is selected.
#[component]
fn PolicyEditor(save: ServerAction<SavePolicy>, selected: Signal<Option<Uuid>>) -> impl IntoView {
    // Keyed on the selection only: a refused save must leave the author's text alone.
    let policy = Resource::new(
        move || selected.get(),
        |id| async move {
            match id {
                Some(id) => get_policy(id).await.map(Some),
                None => Ok(None),
            }
        },
    );
    let error = Signal::derive(move || save.value().get().and_then(Result::err));
    let saved = move || save.value().get().and_then(Result::ok);
    view! {
        <section class="card editor" aria-labelledby="editor-heading">
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match policy.await {
                        Ok(Some(p)) if p.builtin => view! { <BuiltinSource policy=p/> }.into_any(),
                        Ok(Some(p)) => view! { <EditForm save error policy=Some(p)/> }.into_any(),
                        Ok(None) => view! { <EditForm save error policy=None/> }.into_any(),
                        Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                    }
                })}
            </Transition>
            {move || saved().map(|p| view! {
                <p class="alert success" role="status" id="policy-saved">
                    {format!("Saved {} version {}.", p.name, p.version)}
                    " "<a href=format!("/policies?id={}", p.id)>"Open it"</a>
                </p>
            })}
        </section>
    }
}

#[component]
fn BuiltinSource(policy: PolicyView) -> impl IntoView {
    view! {
        <h2 id="editor-heading">{policy.name.clone()}" "<span class="badge builtin">"built-in"</span></h2>
        <p class="muted">{policy.description.clone().unwrap_or_default()}</p>
        <p class="muted small">
            {format!("Version {} · sha256 {}", policy.version, &policy.sha256[..policy.sha256.len().min(12)])}
            " · built-in policies are read-only; copy the source into a new policy to change it."
        </p>
        <label for="policy-source" class="sr-only">"Source"</label>
        <textarea id="policy-source" class="code" readonly rows="18">{policy.source.clone()}</textarea>
    }
}

#[component]
fn EditForm(
    save: ServerAction<SavePolicy>,
    error: Signal<Option<crate::error::AppError>>,
    policy: Option<PolicyView>,
) -> impl IntoView {
    let heading = policy.as_ref().map_or_else(|| "New policy".to_owned(), |p| format!("Edit {}", p.name));
    let id = policy.as_ref().map(|p| p.id.to_string()).unwrap_or_default();
    let source = policy.as_ref().map_or_else(|| TEMPLATE.to_owned(), |p| p.source.clone());
    let description = policy.as_ref().and_then(|p| p.description.clone()).unwrap_or_default();
    let is_new = policy.is_none();
    view! {
        <h2 id="editor-heading">{heading}</h2>
        {policy.as_ref().map(|p| view! {
            <p class="muted small">
                {format!("Version {} · sha256 {}", p.version, &p.sha256[..p.sha256.len().min(12)])}
            </p>
        })}
        <ActionForm action=save attr:class="form" attr:id="policy-form">
            <input type="hidden" name="id" value=id/>
            {is_new.then(|| view! {
                <div class="field">
                    <label for="policy-name">"Name"</label>
                    <input id="policy-name" name="name" required maxlength="64" placeholder="reads-only"/>
                </div>
            })}
            <div class="field">
                <label for="policy-description">"Description"</label>
                <input id="policy-description" name="description" maxlength="1000" value=description/>
            </div>
            <div class="field">
                <label for="policy-source">"Rego source"</label>
                <textarea id="policy-source" name="source" class="code" rows="18" spellcheck="false"
                    required aria-describedby="policy-error">{source}</textarea>
            </div>
            // The compiler's message points at a line and column with a caret: keep its layout.
            <div id="policy-error">
                {move || error.get().map(|e| view! {
                    <pre class="alert error policy-error" role="alert" data-code=e.code.clone()>{e.message.trim().to_owned()}</pre>
                })}
            </div>
            <button type="submit" class="button primary" disabled=move || save.pending().get()>
                {if is_new { "Create policy" } else { "Save new version" }}
            </button>
        </ActionForm>
    }
}

/// Pick an agent and a sample action; see what the policy decides. Nothing runs.
#[component]
fn Playground(policies: Resource<Result<Vec<PolicySummary>, crate::error::AppError>>) -> impl IntoView {
    let evaluate = ServerAction::<EvaluatePolicy>::new();
    let agents = Resource::new(|| (), |_| list_agents(None));
    let error = Signal::derive(move || evaluate.value().get().and_then(Result::err));
    let verdict = move || evaluate.value().get().and_then(Result::ok);
    view! {
        <section class="card" aria-labelledby="playground-heading">
            <h2 id="playground-heading">"Playground"</h2>
            <p class="muted">
                "Ask a policy about a sample action for one of your agents. "
                "Nothing is sent, audited or spent."
            </p>
            <ActionForm action=evaluate attr:class="form grid" attr:id="playground-form">
                <div class="field">
                    <label for="try-agent">"Agent"</label>
                    <select id="try-agent" name="agent_id" required>
                        <Transition fallback=|| view! { <option value="">"Loading…"</option> }>
                            {move || Suspend::new(async move {
                                let agents = agents.await.map(|p| p.items).unwrap_or_default();
                                if agents.is_empty() {
                                    view! { <option value="">"No agents yet"</option> }.into_any()
                                } else {
                                    agents.into_iter().map(|a| view! {
                                        <option value=a.id.to_string()>{format!("{} ({})", a.name, a.policy)}</option>
                                    }).collect_view().into_any()
                                }
                            })}
                        </Transition>
                    </select>
                </div>
                <div class="field">
                    <label for="try-policy">"Policy"</label>
                    <select id="try-policy" name="policy">
                        <option value="">"The agent's own"</option>
                        <Transition fallback=|| ()>
                            {move || Suspend::new(async move {
                                policies.await.unwrap_or_default().into_iter().map(|p| view! {
                                    <option value=p.id.to_string()>{p.name.clone()}</option>
                                }).collect_view()
                            })}
                        </Transition>
                    </select>
                </div>
                <div class="field">
                    <label for="try-method">"Method"</label>
                    <select id="try-method" name="method">
                        {["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].into_iter().map(|m| view! {
                            <option value=m>{m}</option>
                        }).collect_view()}
                    </select>
                </div>
                <div class="field">
                    <label for="try-cost">"Cost (USD)"</label>
                    <input id="try-cost" name="cost" inputmode="decimal" placeholder="0"/>
                </div>
                <div class="field wide">
                    <label for="try-url">"URL"</label>
                    <input id="try-url" name="url" type="url"
                        placeholder="https://api.github.com/repos/o/r/issues"/>
                </div>
                <div class="field wide">
                    <label for="try-body">"Body"</label>
                    <textarea id="try-body" name="body" class="code" rows="3"></textarea>
                </div>
                <details class="field wide mcp-trial" id="try-mcp">
                    <summary>"MCP tool call (optional)"</summary>
                    <p class="hint muted small">
                        "With a tool, the action is an MCP tool call and the input has "<code>"input.mcp"</code>
                        ", as a call through "<code>"/mcp"</code>" would. On one of your MCP connections it is                          the request AEGIS would send it; otherwise the method and address above stand for it."
                    </p>
                    <div class="form grid">
                        <div class="field">
                            <label for="try-mcp-server">"MCP connection"</label>
                            <input id="try-mcp-server" name="mcp_server" autocomplete="off" placeholder="notes"/>
                        </div>
                        <div class="field">
                            <label for="try-mcp-tool">"Tool"</label>
                            <input id="try-mcp-tool" name="mcp_tool" autocomplete="off" placeholder="read_note"/>
                        </div>
                        <div class="field wide">
                            <label for="try-mcp-arguments">"Arguments (JSON)"</label>
                            <textarea id="try-mcp-arguments" name="mcp_arguments" class="code" rows="3"
                                spellcheck="false" placeholder="{\"name\": \"todo\"}"></textarea>
                        </div>
                    </div>
                </details>
                <div class="field wide">
                    <FormError error/>
                    <button type="submit" class="button primary" disabled=move || evaluate.pending().get()>
                        "Evaluate"
                    </button>
                </div>
            </ActionForm>
            {move || verdict().map(|v| view! { <VerdictView verdict=v/> })}
        </section>
    }
}

#[component]
fn VerdictView(verdict: PolicyVerdict) -> impl IntoView {
    let tone = match verdict.decision.as_str() {
        "allow" => "allow",
        "require_approval" => "pending",
        _ => "deny",
    };
    view! {
        <div class="verdict" id="verdict" role="status" data-decision=verdict.decision.clone()>
            <p>
                "Decision: "
                <span class=format!("badge {tone}")>{verdict.decision.replace('_', " ")}</span>
            </p>
            {if verdict.reasons.is_empty() {
                view! { <p class="muted">"The policy gave no reasons."</p> }.into_any()
            } else {
                view! {
                    <ul class="reasons">
                        {verdict.reasons.into_iter().map(|r| view! { <li>{r}</li> }).collect_view()}
                    </ul>
                }.into_any()
            }}
            {verdict.error.map(|e| view! { <p class="alert error">{e}</p> })}
            <details>
                <summary>"Policy input"</summary>
                <pre class="code">{verdict.input}</pre>
            </details>
        </div>
    }
}
