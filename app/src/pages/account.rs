//! The account: who is signed in and the sessions (refresh-token families) that can
//! act as them, each with a Revoke button.

use leptos::prelude::*;
use leptos_meta::Title;

use super::FormError;
use crate::model::SessionView;
use crate::rpc::{RevokeSession, current_user, list_sessions};

#[component]
pub fn AccountPage() -> impl IntoView {
    let revoke = ServerAction::<RevokeSession>::new();
    let user = Resource::new(|| (), |_| current_user());
    let sessions = Resource::new(move || revoke.version().get(), |_| list_sessions());
    let error = Signal::derive(move || revoke.value().get().and_then(Result::err));
    view! {
        <Title text="Account"/>
        <div class="page-head">
            <h1>"Account"</h1>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    user.await.ok().flatten().map(|u| view! {
                        <p class="muted">{format!("Signed in as {} <{}>", u.name, u.email)}</p>
                    })
                })}
            </Transition>
        </div>
        <section class="card" aria-labelledby="sessions-heading">
            <h2 id="sessions-heading">"Sessions"</h2>
            <p class="muted">
                "Every sign-in is a session. Revoke one you do not recognise: its tokens stop working at once."
            </p>
            <FormError error/>
            <Transition fallback=|| view! { <p class="muted">"Loading sessions…"</p> }>
                {move || Suspend::new(async move {
                    match sessions.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty muted">"No live sessions."</p>
                        }.into_any(),
                        Ok(list) => view! { <SessionTable list revoke/> }.into_any(),
                        Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn SessionTable(list: Vec<SessionView>, revoke: ServerAction<RevokeSession>) -> impl IntoView {
    let when = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    view! {
        <div class="table-wrap">
            <table class="table" id="sessions-table">
                <thead>
                    <tr>
                        <th scope="col">"Device"</th>
                        <th scope="col">"IP address"</th>
                        <th scope="col">"Signed in"</th>
                        <th scope="col">"Last used"</th>
                        <th scope="col"><span class="sr-only">"Actions"</span></th>
                    </tr>
                </thead>
                <tbody>
                    {list.into_iter().map(|s| {
                        let label = if s.current { "Sign out" } else { "Revoke" };
                        view! {
                            <tr data-session=s.id.to_string() data-current=s.current.to_string()>
                                <td>
                                    <span class="ua">{s.user_agent.clone().unwrap_or_else(|| "Unknown client".into())}</span>
                                    {s.current.then(|| view! { " " <span class="badge allow">"this session"</span> })}
                                </td>
                                <td>{s.ip.clone().unwrap_or_else(|| "—".into())}</td>
                                <td>{when(s.created_at)}</td>
                                <td>{when(s.last_used_at)}</td>
                                <td class="actions">
                                    <ActionForm action=revoke attr:class="inline">
                                        <input type="hidden" name="id" value=s.id.to_string()/>
                                        <button type="submit" class="button small danger">{label}</button>
                                    </ActionForm>
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
