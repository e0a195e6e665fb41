//! The vault: add a secret (its value is write-only: never shown or returned
//! again), see what each one is for and who may use it, rotate or delete it.

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_meta::Title;
use uuid::Uuid;

use super::FormError;
use crate::model::{AgentStatus, Injection, SecretView};
use crate::rpc::{CreateSecret, DeleteSecret, RotateSecret, agent_choices, list_secrets};

fn injection_label(inject: &Injection) -> String {
    match inject {
        Injection::Header { header, format } => format!("header {header}: {format}"),
        Injection::QueryParam { query_param } => format!("query ?{query_param}=…"),
    }
}

#[component]
pub fn SecretsPage() -> impl IntoView {
    let create = ServerAction::<CreateSecret>::new();
    let rotate = ServerAction::<RotateSecret>::new();
    let delete = ServerAction::<DeleteSecret>::new();
    let secrets = Resource::new(
        move || (create.version().get(), rotate.version().get(), delete.version().get()),
        |_| list_secrets(),
    );
    let agents = Resource::new(|| (), |_| agent_choices());
    let error = Signal::derive(move || {
        rotate.value().get().and_then(Result::err).or_else(|| delete.value().get().and_then(Result::err))
    });
    view! {
        <Title text="Secrets"/>
        <div class="page-head">
            <h1>"Secrets"</h1>
            <p class="muted">
                "Real credentials live here, encrypted. AEGIS injects them into granted agents' calls to the \
                 allowed hosts; agents never see them, and neither does anyone after you save one."
            </p>
        </div>
        <NewSecretForm create agents/>
        <section class="card" aria-labelledby="vault-heading">
            <h2 id="vault-heading">"Your vault"</h2>
            <FormError error/>
            {move || rotate.value().get().and_then(Result::ok).map(|s| view! {
                <p class="saved" role="status">{format!("New value saved for {}.", s.name)}</p>
            })}
            <Transition fallback=|| view! { <p class="muted loading" role="status">"Loading secrets…"</p> }>
                {move || Suspend::new(async move {
                    let names: HashMap<Uuid, String> = agents
                        .await
                        .map(|p| p.items.into_iter().map(|a| (a.id, a.name)).collect())
                        .unwrap_or_default();
                    match secrets.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty muted" id="secrets-empty">
                                "No secrets yet. Add one above, with the hosts it may be sent to and the agents that may use it."
                            </p>
                        }.into_any(),
                        Ok(list) => view! { <SecretTable secrets=list names rotate delete/> }.into_any(),
                        Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn NewSecretForm(
    create: ServerAction<CreateSecret>,
    agents: Resource<Result<crate::model::Page<crate::model::AgentView>, crate::error::AppError>>,
) -> impl IntoView {
    let error = Signal::derive(move || create.value().get().and_then(Result::err));
    let created = move || create.value().get().and_then(Result::ok);
    let form = super::cleared_on_success(create);
    view! {
        <section class="card" aria-labelledby="new-secret-heading">
            <h2 id="new-secret-heading">"Add a secret"</h2>
            <ActionForm action=create node_ref=form attr:class="form grid" attr:id="secret-form">
                <div class="field">
                    <label for="secret-name">"Name"</label>
                    <input id="secret-name" name="name" required maxlength="100" placeholder="stripe-live" autocomplete="off"/>
                </div>
                <div class="field">
                    <label for="secret-value">"Value"</label>
                    <input id="secret-value" name="value" type="password" required autocomplete="off"
                        placeholder="sk_live_…"/>
                </div>
                <div class="field wide">
                    <label for="secret-hosts">"Allowed hosts"</label>
                    <textarea id="secret-hosts" name="allowed_hosts" rows="2" required
                        placeholder="api.stripe.com, *.example.com, http://10.0.0.5:8080"></textarea>
                    <span class="hint muted small">"Comma or line separated. The secret is only ever sent to these hosts: https on port 443 unless you write a scheme (http://) or a port (:8443, :* for any)."</span>
                </div>
                <fieldset class="field wide injection">
                    <legend>"Inject as"</legend>
                    <div class="form grid nested">
                        <div class="field">
                            <label for="secret-header">"Header name"</label>
                            <input id="secret-header" name="header" placeholder="Authorization" autocomplete="off"/>
                        </div>
                        <div class="field">
                            <label for="secret-format">"Header value format"</label>
                            <input id="secret-format" name="format" placeholder="Bearer {secret}" autocomplete="off"/>
                        </div>
                        <div class="field">
                            <label for="secret-query">"…or query parameter"</label>
                            <input id="secret-query" name="query_param" placeholder="api_key" autocomplete="off"/>
                        </div>
                    </div>
                    <span class="hint muted small">"Fill a header name (with a format, where {secret} stands for the value; blank sends the value alone) or a query parameter."</span>
                </fieldset>
                <fieldset class="field wide">
                    <legend>"Agents that may use it"</legend>
                    <Transition fallback=|| view! { <p class="muted small">"Loading agents…"</p> }>
                        {move || Suspend::new(async move {
                            let live: Vec<_> = agents
                                .await
                                .map(|p| p.items)
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|a| a.status != AgentStatus::Revoked)
                                .collect();
                            if live.is_empty() {
                                view! {
                                    <p class="muted small">"No agents yet: "<a href="/agents">"create one"</a>", then grant it here or on its page."</p>
                                }.into_any()
                            } else {
                                view! {
                                    <div class="choice-row wrap-row" id="secret-agents">
                                        // Indexed names make a list the server function reads as `agents`.
                                        {live.into_iter().enumerate().map(|(i, a)| view! {
                                            <label class="choice">
                                                <input type="checkbox" name=format!("agents[{i}]") value=a.id.to_string()/>
                                                " "{a.name}
                                            </label>
                                        }).collect_view()}
                                    </div>
                                }.into_any()
                            }
                        })}
                    </Transition>
                </fieldset>
                <div class="field wide">
                    <FormError error/>
                    <button type="submit" class="button primary" disabled=move || create.pending().get()>"Save secret"</button>
                </div>
            </ActionForm>
            {move || created().map(|s| view! {
                <p class="saved" role="status" id="secret-saved">
                    {format!("Saved {}. Its value is stored encrypted and will not be shown again.", s.name)}
                </p>
            })}
        </section>
    }
}

#[component]
fn SecretTable(
    secrets: Vec<SecretView>,
    names: HashMap<Uuid, String>,
    rotate: ServerAction<RotateSecret>,
    delete: ServerAction<DeleteSecret>,
) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table class="table" id="secrets-table">
                <thead><tr>
                    <th scope="col">"Name"</th><th scope="col">"Hosts"</th><th scope="col">"Injected as"</th>
                    <th scope="col">"Agents"</th><th scope="col">"Rotated"</th>
                    <th scope="col"><span class="sr-only">"Actions"</span></th>
                </tr></thead>
                <tbody>
                    {secrets.into_iter().map(|s| {
                        let granted: Vec<String> = s.agents.iter()
                            .map(|id| names.get(id).cloned().unwrap_or_else(|| id.to_string()))
                            .collect();
                        let id = s.id.to_string();
                        let (rotate_id, rotate_input) = (id.clone(), format!("rotate-{id}"));
                        let rotate_label = format!("New value for {}", s.name);
                        let delete_label = format!("Delete {}", s.name);
                        view! {
                            <tr data-secret=s.name.clone()>
                                <td class="name">{s.name.clone()}</td>
                                <td class="small wrap">{s.allowed_hosts.join(", ")}</td>
                                <td class="small"><code>{injection_label(&s.inject)}</code></td>
                                <td class="small">{if granted.is_empty() { "none yet".to_owned() } else { granted.join(", ") }}</td>
                                <td class="small">{s.rotated_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())}</td>
                                <td class="actions">
                                    <details class="row-action">
                                        <summary class="button small">"Rotate"</summary>
                                        <ActionForm action=rotate attr:class="inline-form">
                                            <input type="hidden" name="id" value=rotate_id/>
                                            <label class="sr-only" for=rotate_input.clone()>{rotate_label}</label>
                                            <input id=rotate_input name="value" type="password" required
                                                autocomplete="off" placeholder="New value"/>
                                            <button type="submit" class="button small primary">"Save value"</button>
                                        </ActionForm>
                                    </details>
                                    <details class="row-action">
                                        <summary class="button small">"Delete"</summary>
                                        <ActionForm action=delete attr:class="inline-form">
                                            <input type="hidden" name="id" value=id/>
                                            <span class="small">"Agents lose it at once."</span>
                                            <button type="submit" class="button small danger">{delete_label}</button>
                                        </ActionForm>
                                    </details>
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
