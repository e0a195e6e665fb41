//! The AEGIS dashboard: Leptos components, routes and the server functions that the
//! server-rendered pages and the hydrated client share.

#[cfg(feature = "ssr")]
pub mod backend;
pub mod error;
pub mod live;
pub mod model;
pub mod money;
mod pages;
pub mod rpc;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{ParentRoute, Route, Router, Routes};
use leptos_router::{SsrMode, path};

/// The AEGIS diamond, inline so the site needs no asset files.
const FAVICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Cpath d='M16 2 30 16 16 30 2 16z' fill='%232f5bea'/%3E%3C/svg%3E";

pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <link rel="icon" type="image/svg+xml" href=FAVICON/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/aegis.css"/>
        <Title formatter=|page: String| if page.is_empty() { "AEGIS".to_owned() } else { format!("{page} · AEGIS") }/>
        <Router>
            <Routes fallback=pages::NotFound>
                // Async: pages arrive complete, so they read and their forms work
                // before (or without) the WebAssembly bundle.
                <Route path=path!("/login") view=pages::auth::LoginPage ssr=SsrMode::Async/>
                <Route path=path!("/register") view=pages::auth::RegisterPage ssr=SsrMode::Async/>
                <ParentRoute path=path!("") view=pages::layout::SignedIn ssr=SsrMode::Async>
                    <Route path=path!("") view=pages::overview::OverviewPage ssr=SsrMode::Async/>
                    <Route path=path!("agents") view=pages::agents::AgentsPage ssr=SsrMode::Async/>
                    <Route path=path!("approvals") view=pages::approvals::ApprovalsPage ssr=SsrMode::Async/>
                    <Route path=path!("approvals/:id") view=pages::approvals::ApprovalPage ssr=SsrMode::Async/>
                    <Route path=path!("audit") view=pages::audit::AuditPage ssr=SsrMode::Async/>
                    <Route path=path!("agents/:id") view=pages::agent::AgentPage ssr=SsrMode::Async/>
                    <Route path=path!("secrets") view=pages::secrets::SecretsPage ssr=SsrMode::Async/>
                    <Route path=path!("connections") view=pages::connections::ConnectionsPage ssr=SsrMode::Async/>
                    <Route path=path!("usage") view=pages::usage::UsagePage ssr=SsrMode::Async/>
                    <Route path=path!("policies") view=pages::policies::PoliciesPage ssr=SsrMode::Async/>
                    <Route path=path!("account") view=pages::account::AccountPage ssr=SsrMode::Async/>
                </ParentRoute>
            </Routes>
        </Router>
    }
}
