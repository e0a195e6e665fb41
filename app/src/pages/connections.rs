//! Connections (gateway mode): named upstreams an unmodified SDK reaches through
//! AEGIS by using the gateway URL shown here as its base URL.

use leptos::prelude::*;
use leptos_meta::Title;

use super::{CopyButton, FormError};
use crate::model::ConnectionView;
use crate::money::format_units;
use crate::rpc::{CreateConnection, DeleteConnection, list_connections, list_secrets};

#[component]
pub fn ConnectionsPage() -> impl IntoView {
    let create = ServerAction::<CreateConnection>::new();
    let delete = ServerAction::<DeleteConnection>::new();
    let connections =
        Resource::new(move || (create.version().get(), delete.version().get()), |_| list_connections());
    let delete_error = Signal::derive(move || delete.value().get().and_then(Result::err));
    view! {
        <Title text="Connections"/>
        <div class="page-head">
            <h1>"Connections"</h1>
            <p class="muted">
                "Gateway mode: name an upstream API, and SDKs that only let you change the base URL send their \
                 calls through AEGIS, with the agent's AEGIS key in place of the real credential."
            </p>
        </div>
        <NewConnectionForm create/>
        <section class="card" aria-labelledby="connections-heading">
            <h2 id="connections-heading">"Your connections"</h2>
            <FormError error=delete_error/>
            <Transition fallback=|| view! { <p class="muted loading" role="status">"Loading connections…"</p> }>
                {move || Suspend::new(async move {
                    match connections.await {
                        Ok((_, list)) if list.is_empty() => view! {
                            <p class="empty muted" id="connections-empty">
                                "No connections yet. Add one above, then give an SDK its gateway URL and an agent key."
                            </p>
                        }.into_any(),
                        Ok((origin, list)) => view! {
                            <ul class="connections" id="connections-list">
                                {list.into_iter().map(|c| view! { <ConnectionItem connection=c origin=origin.clone() delete/> }).collect_view()}
                            </ul>
                        }.into_any(),
                        Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn NewConnectionForm(create: ServerAction<CreateConnection>) -> impl IntoView {
    let secrets = Resource::new(|| (), |_| list_secrets());
    let error = Signal::derive(move || create.value().get().and_then(Result::err));
    let form = super::cleared_on_success(create);
    view! {
        <section class="card" aria-labelledby="new-connection-heading">
            <h2 id="new-connection-heading">"Add a connection"</h2>
            <ActionForm action=create node_ref=form attr:class="form grid" attr:id="connection-form">
                <div class="field">
                    <label for="conn-name">"Name"</label>
                    <input id="conn-name" name="name" required maxlength="100" placeholder="openai" autocomplete="off"/>
                </div>
                <div class="field">
                    <label for="conn-url">"Base URL"</label>
                    <input id="conn-url" name="base_url" type="url" required placeholder="https://api.openai.com/v1"/>
                </div>
                <div class="field">
                    <label for="conn-secret">"Secret"</label>
                    <select id="conn-secret" name="secret">
                        <option value="">"none"</option>
                        <Transition fallback=|| ()>
                            {move || Suspend::new(async move {
                                secrets.await.unwrap_or_default().into_iter().map(|s| view! {
                                    <option value=s.name.clone()>{s.name.clone()}</option>
                                }).collect_view()
                            })}
                        </Transition>
                    </select>
                    <span class="hint muted small">"Injected into every call; its allowed hosts must include the base URL's host."</span>
                </div>
                <div class="field">
                    <label for="conn-cost">"Cost per call (USD)"</label>
                    <input id="conn-cost" name="cost" inputmode="decimal" placeholder="0.00"/>
                </div>
                <div class="field wide">
                    <FormError error/>
                    <button type="submit" class="button primary" disabled=move || create.pending().get()>"Add connection"</button>
                </div>
            </ActionForm>
        </section>
    }
}

#[component]
fn ConnectionItem(
    connection: ConnectionView,
    origin: String,
    delete: ServerAction<DeleteConnection>,
) -> impl IntoView {
    let c = connection;
    let gateway = format!("{origin}{}", c.gateway_path);
    let (id, delete_label) = (c.id.to_string(), format!("Delete {}", c.name));
    view! {
        <li class="connection" data-connection=c.name.clone()>
            <div class="connection-head">
                <strong class="name">{c.name.clone()}</strong>
                <span class="muted small wrap">{"→ "}{c.base_url.clone()}</span>
                <span class="cost">{if c.cost_micros > 0 { format!("${} per call", format_units(c.cost_micros)) } else { "free".into() }}</span>
            </div>
            <dl class="facts">
                <dt>"Secret"</dt><dd>{c.secret.clone().unwrap_or_else(|| "none".into())}</dd>
                <dt>"Added"</dt><dd>{c.created_at.format("%Y-%m-%d %H:%M UTC").to_string()}</dd>
            </dl>
            <label for=format!("gw-{}", c.id)>"Base URL for your SDK"</label>
            <div class="copy-row">
                <input id=format!("gw-{}", c.id) class="key gateway-url" readonly value=gateway onfocus="this.select()"/>
                <CopyButton/>
            </div>
            <details class="row-action">
                <summary class="button small">"Delete"</summary>
                <ActionForm action=delete attr:class="inline-form">
                    <input type="hidden" name="id" value=id/>
                    <span class="small">"SDKs using this URL stop working at once."</span>
                    <button type="submit" class="button small danger">{delete_label}</button>
                </ActionForm>
            </details>
        </li>
    }
}
