//! Connections (gateway mode): named upstreams an unmodified SDK reaches through
//! AEGIS by using the gateway URL shown here as its base URL. Each is charged a flat
//! price per call, or metered from the provider's token counts by a price table
//! edited here. An MCP connection (issue #21) is an MCP server whose tools agents
//! call through AEGIS's `/mcp`, optionally narrowed to an allow-list of tools.

use leptos::prelude::*;
use leptos_meta::Title;
use uuid::Uuid;

use super::{CopyButton, FormError};
use crate::model::{ConnectionView, ModelPrice, Pricing, PricingProvider};
use crate::money::format_units;
use crate::rpc::{
    CreateConnection, DeleteConnection, UpdateConnectionPricing, list_connections, list_secrets,
};

#[component]
pub fn ConnectionsPage() -> impl IntoView {
    let create = ServerAction::<CreateConnection>::new();
    let delete = ServerAction::<DeleteConnection>::new();
    let pricing = ServerAction::<UpdateConnectionPricing>::new();
    // Changes only when a price table is saved, so a refused one stays open with
    // what was typed.
    let priced = Memo::new(move |prev: Option<&usize>| match pricing.value().get() {
        Some(Ok(_)) => pricing.version().get(),
        _ => prev.copied().unwrap_or(0),
    });
    // The connection whose prices were last submitted: its editor shows the error.
    let pricing_for = RwSignal::new(None::<Uuid>);
    Effect::new(move || {
        if let Some(id) = pricing.input().with(|i| i.as_ref().map(|i| i.id)) {
            pricing_for.set(Some(id));
        }
    });
    let connections = Resource::new(
        move || (create.version().get(), delete.version().get(), priced.get()),
        |_| list_connections(),
    );
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
            {move || pricing.value().get().and_then(Result::ok).map(|c| view! {
                <p class="saved" role="status" id="pricing-saved">{format!("Prices saved for {}.", c.name)}</p>
            })}
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
                                {list.into_iter().map(|c| view! {
                                    <ConnectionItem connection=c origin=origin.clone() delete pricing pricing_for/>
                                }).collect_view()}
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
    // The kind chosen: an MCP server takes a tool allow-list and no metered pricing.
    let kind = RwSignal::new(String::from("http"));
    // A saved connection resets the form (and so the select) to HTTP.
    Effect::new(move || {
        if matches!(create.value().get(), Some(Ok(_))) {
            kind.set("http".into());
        }
    });
    let mcp = move || kind.get() == "mcp";
    view! {
        <section class="card" aria-labelledby="new-connection-heading">
            <h2 id="new-connection-heading">"Add a connection"</h2>
            <ActionForm action=create node_ref=form attr:class="form grid" attr:id="connection-form">
                <div class="field">
                    <label for="conn-kind">"Kind"</label>
                    <select id="conn-kind" name="kind" aria-describedby="conn-kind-hint"
                        on:change=move |ev| kind.set(event_target_value(&ev)) prop:value=move || kind.get()>
                        <option value="http">"HTTP: an API behind the gateway URL"</option>
                        <option value="mcp">"MCP: a server whose tools agents call through /mcp"</option>
                    </select>
                    <span class="hint muted small" id="conn-kind-hint">
                        "MCP: agents see its tools at AEGIS's "<code>"/mcp"</code>" as "
                        <code>"<name>__<tool>"</code>", each call governed by their policy."
                    </span>
                </div>
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
                <Show
                    when=mcp
                    fallback=|| view! {
                        <div class="field">
                            <label for="conn-provider">"Pricing"</label>
                            <select id="conn-provider" name="provider" aria-describedby="conn-provider-hint">
                                {provider_options(PricingProvider::Flat)}
                            </select>
                            <span class="hint muted small" id="conn-provider-hint">
                                "Metered: each call costs the tokens the provider reports, at AEGIS's default prices                                  for its models (edit them under Prices once added). Flat: the cost per call."
                            </span>
                        </div>
                    }
                >
                    <div class="field">
                        <label for="conn-tools">"Tools (optional)"</label>
                        <input id="conn-tools" name="tools" autocomplete="off" placeholder="read_note, list_notes"
                            aria-describedby="conn-tools-hint"/>
                        <span class="hint muted small" id="conn-tools-hint">
                            "The only tools agents may see and call, separated by commas; blank: every tool the server lists."
                        </span>
                    </div>
                </Show>
                <div class="field wide">
                    <FormError error/>
                    <button type="submit" class="button primary" disabled=move || create.pending().get()>"Add connection"</button>
                </div>
            </ActionForm>
        </section>
    }
}

/// The pricing choices, `current` selected.
fn provider_options(current: PricingProvider) -> impl IntoView {
    [
        (PricingProvider::Flat, "flat: the cost per call"),
        (PricingProvider::Openai, "openai: metered by tokens"),
        (PricingProvider::Anthropic, "anthropic: metered by tokens"),
    ]
    .map(|(p, label)| view! { <option value=p.as_str() selected=p == current>{label}</option> })
}

/// The metered pricing, if the connection has one (flat is no pricing).
fn metered(c: &ConnectionView) -> Option<&Pricing> {
    c.pricing.as_ref().filter(|p| p.provider != PricingProvider::Flat)
}

/// How a connection's calls are charged, in a line.
fn charge(c: &ConnectionView) -> String {
    match metered(c) {
        Some(p) => {
            let n = p.models.as_ref().map_or(0, |m| m.len());
            let mut line =
                format!("metered · {} · {n} model{}", p.provider.as_str(), if n == 1 { "" } else { "s" });
            if p.fallback.is_some() {
                line.push_str(" + fallback");
            }
            if let Some(cap) = p.max_output_tokens {
                line.push_str(&format!(" · output cap {cap}"));
            }
            line
        }
        None if c.cost_micros > 0 => format!("${} per call", format_units(c.cost_micros)),
        None => "free".into(),
    }
}

/// A price per million tokens in dollars ("—" when the table has none).
fn per_mtok(micros: Option<i64>) -> String {
    micros.map_or_else(|| "—".into(), |m| format!("${}", format_units(m)))
}

fn price_row(model: String, p: &ModelPrice) -> impl IntoView + use<> {
    let name = model.clone();
    view! {
        <tr data-model=model>
            <td class="name"><code>{name}</code></td>
            <td>{per_mtok(p.input_per_mtok_micros)}</td>
            <td>{per_mtok(p.cached_input_per_mtok_micros)}</td>
            <td>{per_mtok(p.output_per_mtok_micros)}</td>
        </tr>
    }
}

/// The saved price table (complete: every model with every price).
fn price_table(id: Uuid, p: &Pricing) -> AnyView {
    let rows = p.models.iter().flatten().map(|(m, price)| price_row(m.clone(), price)).collect_view();
    let fallback = p.fallback.as_ref().map(|f| price_row("any other model".into(), f));
    view! {
        <div class="table-wrap">
            <table class="table prices-table" id=format!("prices-{id}")>
                <caption class="muted small">"USD per million tokens"</caption>
                <thead>
                    <tr>
                        <th scope="col">"Model"</th>
                        <th scope="col">"Input"</th>
                        <th scope="col">"Cached input"</th>
                        <th scope="col">"Output"</th>
                    </tr>
                </thead>
                <tbody>{rows}{fallback}</tbody>
            </table>
        </div>
    }
    .into_any()
}

/// JSON text for a textarea: pretty, or blank when there is nothing.
fn pretty<T: serde::Serialize>(value: Option<&T>) -> String {
    value.and_then(|v| serde_json::to_string_pretty(v).ok()).unwrap_or_default()
}

/// The price editor's form: the current pricing, ready to change.
fn price_editor(
    c: &ConnectionView,
    pricing: ServerAction<UpdateConnectionPricing>,
    pricing_for: RwSignal<Option<Uuid>>,
) -> AnyView {
    let cid = c.id;
    let metered_pricing = metered(c);
    let provider = metered_pricing.map_or(PricingProvider::Flat, |p| p.provider);
    let models_json = pretty(metered_pricing.and_then(|p| p.models.as_ref()));
    let fallback_json = pretty(metered_pricing.and_then(|p| p.fallback.as_ref()));
    let cap = metered_pricing.and_then(|p| p.max_output_tokens).map(|t| t.to_string()).unwrap_or_default();
    let pricing_error = Signal::derive(move || {
        pricing.value().get().and_then(Result::err).filter(|_| pricing_for.get() == Some(cid))
    });
    let ids = move |what: &str| format!("price-{what}-{cid}");
    // A saved change re-renders this form in place (not anew), and a field someone
    // typed into no longer follows its markup: `prop:value` sets what it shows.
    let (models_shown, fallback_shown, cap_shown) = (models_json.clone(), fallback_json.clone(), cap.clone());
    let save_label = format!("Save prices for {}", c.name);
    view! {
        <ActionForm action=pricing attr:class="form grid pricing-form">
            <input type="hidden" name="id" value=cid.to_string()/>
            <div class="field">
                <label for=ids("provider")>"Pricing"</label>
                <select
                    id=ids("provider")
                    name="provider"
                    aria-describedby=ids("provider-hint")
                    prop:value=provider.as_str()
                >
                    {provider_options(provider)}
                </select>
                <span class="hint muted small" id=ids("provider-hint")>
                    "Flat charges the cost per call and ignores the fields below."
                </span>
            </div>
            <div class="field">
                <label for=ids("cap")>"Max output tokens"</label>
                <input id=ids("cap") name="max_output_tokens" inputmode="numeric" placeholder="no cap"
                    value=cap prop:value=cap_shown aria-describedby=ids("cap-hint")/>
                <span class="hint muted small" id=ids("cap-hint")>
                    "Written into calls that ask for more or do not say."
                </span>
            </div>
            <div class="field wide">
                <label for=ids("models")>"Models (JSON)"</label>
                <textarea id=ids("models") name="models" class="code" rows="10" spellcheck="false"
                    autocomplete="off" aria-describedby=ids("models-hint")
                    placeholder="blank: AEGIS's default table for the provider"
                    prop:value=models_shown
                    >{models_json}</textarea>
                <span class="hint muted small" id=ids("models-hint")>
                    "An allow-list: calls for any other model are refused unless there is a fallback. A model \
                     given as "<code>"{}"</code>" takes AEGIS's default prices (e.g. "
                    <code>"{\"gpt-4o-mini\": {}}"</code>"); one AEGIS does not know needs \
                     input_per_mtok_micros and output_per_mtok_micros (millionths of a dollar per million \
                     tokens). Blank: AEGIS's whole default table for the provider."
                </span>
            </div>
            <div class="field wide">
                <label for=ids("fallback")>"Fallback prices (JSON)"</label>
                <textarea id=ids("fallback") name="fallback" class="code short" rows="3" spellcheck="false"
                    autocomplete="off" aria-describedby=ids("fallback-hint")
                    placeholder="{\"input_per_mtok_micros\": 1000000, \"output_per_mtok_micros\": 4000000}"
                    prop:value=fallback_shown
                    >{fallback_json}</textarea>
                <span class="hint muted small" id=ids("fallback-hint")>
                    "For any model not listed; blank: such calls are refused."
                </span>
            </div>
            <div class="field wide">
                <FormError error=pricing_error/>
                <button type="submit" class="button primary" disabled=move || pricing.pending().get()
                    aria-label=save_label>"Save prices"</button>
            </div>
        </ActionForm>
    }
    .into_any()
}

#[component]
fn ConnectionItem(
    connection: ConnectionView,
    origin: String,
    delete: ServerAction<DeleteConnection>,
    pricing: ServerAction<UpdateConnectionPricing>,
    pricing_for: RwSignal<Option<Uuid>>,
) -> impl IntoView {
    let c = connection;
    let gateway = format!("{origin}{}", c.gateway_path);
    let (id, delete_label) = (c.id.to_string(), format!("Delete {}", c.name));
    let provider = metered(&c).map_or(PricingProvider::Flat, |p| p.provider);
    let is_mcp = c.kind == "mcp";
    let table = metered(&c).map(|p| price_table(c.id, p));
    // An MCP connection has no price table: its tool calls cost the cost per call.
    let prices = (!is_mcp).then(|| {
        let editor = price_editor(&c, pricing, pricing_for);
        view! {
            <details class="row-action prices">
                <summary class="button small">"Prices"</summary>
                {table}
                {editor}
            </details>
        }
    });
    let kind_label = if is_mcp { "MCP" } else { "HTTP" };
    let tools = is_mcp.then(|| {
        let shown = match &c.tools {
            Some(list) if !list.is_empty() => list.join(", "),
            Some(_) => "none".to_owned(),
            None => "every tool the server lists".to_owned(),
        };
        view! { <dt>"Tools"</dt><dd class="tools">{shown}</dd> }
    });
    let sdk_label = if is_mcp { "MCP URL for your agents" } else { "Base URL for your SDK" };
    let mcp_note = is_mcp.then(|| view! {
        <p class="hint muted small">"Agents see its tools there as "<code>{format!("{}__<tool>", c.name)}</code>
            ", with their own AEGIS key; the agent page lists the ones its policy lets it see."</p>
    });
    view! {
        <li class="connection" data-connection=c.name.clone() data-kind=c.kind.clone()>
            <div class="connection-head">
                <strong class="name">{c.name.clone()}</strong>
                <span class=format!("badge kind {}", c.kind) data-kind=c.kind.clone()>{kind_label}</span>
                <span class="muted small wrap">{"→ "}{c.base_url.clone()}</span>
                <span class="cost" data-charge=provider.as_str()>{charge(&c)}</span>
            </div>
            <dl class="facts">
                <dt>"Secret"</dt><dd>{c.secret.clone().unwrap_or_else(|| "none".into())}</dd>
                {tools}
                <dt>"Added"</dt><dd>{c.created_at.format("%Y-%m-%d %H:%M UTC").to_string()}</dd>
            </dl>
            <label for=format!("gw-{}", c.id)>{sdk_label}</label>
            <div class="copy-row">
                <input id=format!("gw-{}", c.id) class="key gateway-url" readonly value=gateway onfocus="this.select()"/>
                <CopyButton/>
            </div>
            {mcp_note}
            {prices}
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
    .into_any()
}
