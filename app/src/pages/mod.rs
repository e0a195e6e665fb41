pub mod account;
pub mod agent;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod connections;
pub mod layout;
pub mod overview;
pub mod policies;
pub mod secrets;
pub mod usage;

use leptos::prelude::*;

use crate::error::AppError;

#[component]
pub fn NotFound() -> impl IntoView {
    view! {
        <main class="centered">
            <div class="card narrow">
                <h1>"Page not found"</h1>
                <p class="muted">"There is nothing at this address."</p>
                <a class="button" href="/">"Go to the overview"</a>
            </div>
        </main>
    }
}

/// A ref for a form that clears itself once `action` succeeds, so the next entry
/// starts blank while a refused one stays for correcting. Pass it as `node_ref`.
pub fn cleared_on_success<S>(action: ServerAction<S>) -> NodeRef<leptos::html::Form>
where
    S: leptos::server_fn::ServerFn + Clone + Send + Sync + 'static,
    S::Output: Clone + Send + Sync + 'static,
    S::Error: Clone + Send + Sync + 'static,
{
    let form = NodeRef::<leptos::html::Form>::new();
    Effect::new(move |_| {
        if matches!(action.value().get(), Some(Ok(_)))
            && let Some(form) = form.get()
        {
            form.reset();
        }
    });
    form
}

/// The error a failed server call produced, shown next to the form that made it.
#[component]
pub fn FormError(error: Signal<Option<AppError>>) -> impl IntoView {
    move || {
        error.get().map(|e| {
            view! {
                <p class="alert error" role="alert" data-code=e.code.clone()>
                    {e.message.clone()}
                </p>
            }
        })
    }
}

/// A value shown exactly once (a new agent key): read-only, selected on focus, with
/// a copy button (a plain inline handler, so it works before hydration too).
#[component]
pub fn OneTimeKey(title: String, key: String) -> impl IntoView {
    view! {
        <div class="new-key" role="status" id="new-key">
            <p>
                <strong>{title}</strong>
                " — copy it now. AEGIS stores only a hash and will never show it again."
            </p>
            <div class="copy-row">
                <label class="sr-only" for="new-agent-key">"New agent API key"</label>
                <input id="new-agent-key" class="key" readonly value=key onfocus="this.select()"/>
                <CopyButton/>
            </div>
        </div>
    }
}

/// Copies the value of the input just before it.
#[component]
pub fn CopyButton() -> impl IntoView {
    const COPY: &str = "var b=this,i=b.previousElementSibling;i.select();\
        (navigator.clipboard?navigator.clipboard.writeText(i.value):Promise.reject())\
        .then(function(){b.textContent='Copied'},function(){b.textContent='Press Ctrl+C'})";
    view! { <button type="button" class="button small copy" onclick=COPY>"Copy"</button> }
}
