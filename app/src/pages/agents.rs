//! Agents: create one (its key is shown exactly once), list them, suspend, resume
//! or revoke them.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use super::{FormError, OneTimeKey};
use crate::model::{AgentCreated, AgentStatus, AgentView};
use crate::money::format_units;
use crate::rpc::{CreateAgent, SetAgentState, list_agents, list_policies, take_new_key};

#[component]
pub fn AgentsPage() -> impl IntoView {
    let create = ServerAction::<CreateAgent>::new();
    let set_state = ServerAction::<SetAgentState>::new();
    let cursor = move || use_query_map().read().get("cursor");
    let tick = crate::live::Live::get().map(|l| l.tick);
    let agents = Resource::new(
        move || (cursor(), create.version().get(), set_state.version().get(), tick.map(|t| t.get())),
        |(cursor, _, _, _)| list_agents(cursor),
    );
    view! {
        <Title text="Agents"/>
        <div class="page-head">
            <h1>"Agents"</h1>
            <p class="muted">"Each agent gets its own AEGIS key. Real credentials never leave AEGIS."</p>
        </div>
        <CreateAgentForm create/>
        <section class="card" aria-labelledby="agents-heading">
            <h2 id="agents-heading">"Your agents"</h2>
            <Transition fallback=|| view! { <p class="muted">"Loading agents…"</p> }>
                {move || Suspend::new(async move {
                    match agents.await {
                        Ok(page) if page.items.is_empty() => view! {
                            <p class="empty muted">"No agents yet. Create one above to get its key."</p>
                        }.into_any(),
                        Ok(page) => view! {
                            <AgentTable agents=page.items set_state/>
                            {page.next_cursor.map(|c| view! {
                                <a class="button ghost" href=format!("/agents?cursor={c}")>"Next page →"</a>
                            })}
                        }.into_any(),
                        Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn CreateAgentForm(create: ServerAction<CreateAgent>) -> impl IntoView {
    let policies = Resource::new(|| (), |_| list_policies());
    // A key created by a plain form post (no WebAssembly) arrives after the redirect.
    let flashed = Resource::new(|| (), |_| take_new_key());
    let error = Signal::derive(move || create.value().get().and_then(Result::err));
    let created = move || create.value().get().and_then(Result::ok);
    let form = super::cleared_on_success(create);
    view! {
        <section class="card" aria-labelledby="create-heading">
            <h2 id="create-heading">"New agent"</h2>
            <ActionForm action=create node_ref=form attr:class="form grid" attr:id="create-agent-form">
                <div class="field">
                    <label for="agent-name">"Name"</label>
                    <input id="agent-name" name="name" required maxlength="100" placeholder="billing-bot"/>
                </div>
                <div class="field">
                    <label for="agent-policy">"Policy"</label>
                    <select id="agent-policy" name="policy">
                        <Transition fallback=|| view! { <option value="">"default"</option> }>
                            {move || Suspend::new(async move {
                                policies.await.unwrap_or_default().into_iter().map(|p| {
                                    let selected = p.name == "default";
                                    view! { <option value=p.name.clone() selected=selected>{p.name.clone()}</option> }
                                }).collect_view()
                            })}
                        </Transition>
                    </select>
                </div>
                <div class="field wide">
                    <label for="agent-description">"Description"</label>
                    <input id="agent-description" name="description" maxlength="1000"
                        placeholder="What this agent does"/>
                </div>
                <div class="field">
                    <label for="agent-daily">"Daily limit (USD)"</label>
                    <input id="agent-daily" name="daily_limit" inputmode="decimal" placeholder="no limit"/>
                </div>
                <div class="field">
                    <label for="agent-monthly">"Monthly limit (USD)"</label>
                    <input id="agent-monthly" name="monthly_limit" inputmode="decimal" placeholder="no limit"/>
                </div>
                <div class="field wide">
                    <FormError error/>
                    <button type="submit" class="button primary" disabled=move || create.pending().get()>
                        "Create agent"
                    </button>
                </div>
            </ActionForm>
            {move || created().map(|c| view! { <NewKey created=c/> })}
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    flashed.await.ok().flatten().map(|c| view! { <NewKey created=c/> })
                })}
            </Transition>
        </section>
    }
}

/// The one time an agent's key is visible.
#[component]
fn NewKey(created: AgentCreated) -> impl IntoView {
    view! { <OneTimeKey title=format!("Key for {}", created.agent.name) key=created.api_key/> }
}

#[component]
fn AgentTable(agents: Vec<AgentView>, set_state: ServerAction<SetAgentState>) -> impl IntoView {
    let limit = |m: i64| {
        if m == 0 { "—".to_owned() } else { format!("${}", format_units(m)) }
    };
    view! {
        <div class="table-wrap">
            <table class="table" id="agents-table">
                <thead>
                    <tr>
                        <th scope="col">"Name"</th>
                        <th scope="col">"Status"</th>
                        <th scope="col">"Policy"</th>
                        <th scope="col">"Trust"</th>
                        <th scope="col">"Daily"</th>
                        <th scope="col">"Monthly"</th>
                        <th scope="col">"Key"</th>
                        <th scope="col"><span class="sr-only">"Actions"</span></th>
                    </tr>
                </thead>
                <tbody>
                    {agents.into_iter().map(|a| {
                        let status = a.status.as_str();
                        let id = a.id.to_string();
                        let toggle = match a.status {
                            AgentStatus::Active => Some(("suspend", "Suspend")),
                            AgentStatus::Suspended => Some(("resume", "Resume")),
                            AgentStatus::Revoked => None,
                        };
                        view! {
                            <tr data-agent=a.name.clone()>
                                <td>
                                    <a class="name" href=format!("/agents/{id}")>{a.name.clone()}</a>
                                    <div class="muted small">{a.description.clone().unwrap_or_default()}</div>
                                </td>
                                <td><span class=format!("badge {status}")>{status}</span></td>
                                <td>{a.policy.clone()}</td>
                                <td>{a.trust_score}</td>
                                <td>{limit(a.daily_limit_micros)}</td>
                                <td>{limit(a.monthly_limit_micros)}</td>
                                <td><code>{a.key_prefix.clone().unwrap_or_default()}"…"</code></td>
                                <td class="actions">
                                    {toggle.map(|(state, label)| view! {
                                        <ActionForm action=set_state attr:class="inline">
                                            <input type="hidden" name="id" value=id.clone()/>
                                            <input type="hidden" name="state" value=state/>
                                            <button type="submit" class="button small">{label}</button>
                                        </ActionForm>
                                    })}
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
