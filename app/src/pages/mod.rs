pub mod account;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod layout;
pub mod overview;
pub mod policies;

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
