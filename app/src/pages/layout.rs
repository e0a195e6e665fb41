//! The signed-in frame: navigation, the sponsor's name and sign-out. The server
//! redirects anonymous visitors to /login before this renders.

use leptos::prelude::*;
use leptos_router::components::{A, Outlet};

use crate::live::Live;
use crate::rpc::{Logout, current_user, pending_approvals};

#[component]
pub fn SignedIn() -> impl IntoView {
    let user = Resource::new(|| (), |_| current_user());
    let logout = ServerAction::<Logout>::new();
    let live = Live::new();
    provide_context(live);
    // Effects run in the browser only: one socket for the whole app.
    Effect::new(move |started: Option<()>| {
        if started.is_none() {
            #[cfg(feature = "hydrate")]
            crate::live::connect(live);
        }
    });
    let pending = Resource::new(move || live.tick.get(), |_| pending_approvals());
    view! {
        <div class="frame">
            <a class="skip-link" href="#main">"Skip to content"</a>
            <header class="topbar">
                <a class="brand" href="/"><span class="logo" aria-hidden="true">"◆"</span>" AEGIS"</a>
                <nav class="nav" aria-label="Main">
                    <A href="/" exact=true>"Overview"</A>
                    <A href="/agents">"Agents"</A>
                    <A href="/approvals">
                        "Approvals"
                        <Transition fallback=|| ()>
                            {move || Suspend::new(async move {
                                pending.await.ok().filter(|(n, _)| *n > 0).map(|(n, more)| view! {
                                    <span class="count" id="pending-count">
                                        {if more { format!("{n}+") } else { n.to_string() }}
                                    </span>
                                    <span class="sr-only">" pending"</span>
                                })
                            })}
                        </Transition>
                    </A>
                    <A href="/usage">"Usage"</A>
                    <A href="/audit">"Audit"</A>
                    <A href="/secrets">"Secrets"</A>
                    <A href="/connections">"Connections"</A>
                    <A href="/policies">"Policies"</A>
                    <A href="/account">"Account"</A>
                </nav>
                <span class="live" data-live=move || if live.connected.get() { "on" } else { "off" }
                    title=move || if live.connected.get() { "Live updates on" } else { "Live updates reconnecting" }>
                    <span class="dot" aria-hidden="true"></span>
                    <span class="sr-only">"Live updates"</span>
                </span>
                <div class="account">
                    <Transition fallback=|| ()>
                        {move || Suspend::new(async move {
                            user.await.ok().flatten().map(|u| view! {
                                <span class="who" title=u.email.clone()>{u.name.clone()}</span>
                            })
                        })}
                    </Transition>
                    <ActionForm action=logout attr:class="inline">
                        <button type="submit" class="button ghost">"Sign out"</button>
                    </ActionForm>
                </div>
            </header>
            <main class="content" id="main" tabindex="-1">
                <Outlet/>
            </main>
            <Toasts live/>
        </div>
    }
}

/// Risky moments, impossible to miss: a polite live region, newest last.
#[component]
fn Toasts(live: Live) -> impl IntoView {
    view! {
        <div class="toasts" role="status" aria-live="polite" id="toasts">
            <For each=move || live.toasts.get() key=|t| t.id let:toast>
                <div class=format!("toast {}", toast.tone)>
                    <div class="toast-text">
                        <strong>{toast.title.clone()}</strong>
                        <span>{toast.detail.clone()}</span>
                    </div>
                    {toast.href.clone().map(|href| view! { <a class="button small" href=href>"Open"</a> })}
                    <button type="button" class="button ghost small" aria-label="Dismiss"
                        on:click=move |_| live.dismiss(toast.id)>"×"</button>
                </div>
            </For>
        </div>
    }
}
