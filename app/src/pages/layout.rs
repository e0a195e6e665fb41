//! The signed-in frame: navigation, the sponsor's name and sign-out. The server
//! redirects anonymous visitors to /login before this renders.

use leptos::prelude::*;
use leptos_router::components::{A, Outlet};

use crate::rpc::{Logout, current_user};

#[component]
pub fn SignedIn() -> impl IntoView {
    let user = Resource::new(|| (), |_| current_user());
    let logout = ServerAction::<Logout>::new();
    view! {
        <div class="frame">
            <header class="topbar">
                <a class="brand" href="/"><span class="logo" aria-hidden="true">"◆"</span>" AEGIS"</a>
                <nav class="nav" aria-label="Main">
                    <A href="/" exact=true>"Overview"</A>
                    <A href="/agents">"Agents"</A>
                </nav>
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
            <main class="content">
                <Outlet/>
            </main>
        </div>
    }
}
