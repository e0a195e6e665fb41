use leptos::prelude::*;
use leptos_meta::Title;

use crate::live::Live;
use crate::model::AgentStatus;
use crate::rpc::{list_agents, pending_approvals};

#[component]
pub fn OverviewPage() -> impl IntoView {
    let tick = Live::get().map(|l| l.tick);
    let agents = Resource::new(move || tick.map(|t| t.get()), |_| list_agents(None));
    let pending = Resource::new(move || tick.map(|t| t.get()), |_| pending_approvals());
    view! {
        <Title text="Overview"/>
        <h1>"Overview"</h1>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let pending = pending.await.map(|(n, more)| if more { format!("{n}+") } else { n.to_string() });
                match agents.await {
                    Ok(page) => {
                        let count = |s: AgentStatus| page.items.iter().filter(|a| a.status == s).count();
                        let (active, suspended) = (count(AgentStatus::Active), count(AgentStatus::Suspended));
                        view! {
                            <div class="cards">
                                <div class="card stat"><span class="label">"Active agents"</span><span class="value">{active}</span></div>
                                <div class="card stat"><span class="label">"Suspended agents"</span><span class="value">{suspended}</span></div>
                                <a class="card stat" href="/approvals" id="stat-pending">
                                    <span class="label">"Pending approvals"</span>
                                    <span class="value">{pending.unwrap_or_else(|_| "—".into())}</span>
                                </a>
                            </div>
                            {(page.items.is_empty()).then(|| view! {
                                <div class="card empty">
                                    <h2>"No agents yet"</h2>
                                    <p class="muted">"Create an agent to give it an AEGIS key instead of real credentials."</p>
                                    <a class="button primary" href="/agents">"Create an agent"</a>
                                </div>
                            })}
                        }.into_any()
                    }
                    Err(e) => view! { <p class="alert error">{e.message}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}
