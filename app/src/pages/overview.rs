use leptos::prelude::*;
use leptos_meta::Title;

use crate::model::AgentStatus;
use crate::rpc::list_agents;

#[component]
pub fn OverviewPage() -> impl IntoView {
    let agents = Resource::new(|| (), |_| list_agents(None));
    view! {
        <Title text="Overview"/>
        <h1>"Overview"</h1>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match agents.await {
                    Ok(page) => {
                        let count = |s: AgentStatus| page.items.iter().filter(|a| a.status == s).count();
                        let (active, suspended) = (count(AgentStatus::Active), count(AgentStatus::Suspended));
                        view! {
                            <div class="cards">
                                <div class="card stat"><span class="label">"Active agents"</span><span class="value">{active}</span></div>
                                <div class="card stat"><span class="label">"Suspended agents"</span><span class="value">{suspended}</span></div>
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
