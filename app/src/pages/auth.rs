//! Sign-in and registration. Plain forms that post to server functions, so they
//! work before (or without) the WebAssembly bundle.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use super::FormError;
use crate::rpc::{Login, Register};

#[component]
fn AuthCard(title: &'static str, children: Children) -> impl IntoView {
    view! {
        <Title text=title/>
        <main class="centered auth">
            <div class="brand-large">
                <span class="logo" aria-hidden="true">"◆"</span>
                " AEGIS"
            </div>
            <p class="tagline muted">"The control plane for AI agents"</p>
            <div class="card narrow">
                <h1>{title}</h1>
                {children()}
            </div>
        </main>
    }
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let error = Signal::derive(move || login.value().get().and_then(Result::err));
    let next = move || use_query_map().read().get("next").unwrap_or_default();
    view! {
        <AuthCard title="Sign in">
            <ActionForm action=login attr:class="form" attr:id="login-form">
                <input type="hidden" name="next" value=next/>
                <label for="login-email">"Email"</label>
                <input id="login-email" type="email" name="email" autocomplete="username" required/>
                <label for="login-password">"Password"</label>
                <input id="login-password" type="password" name="password" autocomplete="current-password" required/>
                <FormError error/>
                <button type="submit" class="button primary" disabled=move || login.pending().get()>
                    "Sign in"
                </button>
            </ActionForm>
            <p class="muted small">"New to AEGIS? " <a href="/register">"Create an account"</a></p>
        </AuthCard>
    }
}

#[component]
pub fn RegisterPage() -> impl IntoView {
    let register = ServerAction::<Register>::new();
    let error = Signal::derive(move || register.value().get().and_then(Result::err));
    view! {
        <AuthCard title="Create your account">
            <ActionForm action=register attr:class="form" attr:id="register-form">
                <label for="register-name">"Name"</label>
                <input id="register-name" type="text" name="name" autocomplete="name" required/>
                <label for="register-email">"Email"</label>
                <input id="register-email" type="email" name="email" autocomplete="email" required/>
                <label for="register-password">"Password"</label>
                <input id="register-password" type="password" name="password" autocomplete="new-password"
                    minlength="10" required aria-describedby="password-help"/>
                <p id="password-help" class="muted small">
                    "At least 10 characters, mixing letters with digits or symbols."
                </p>
                <FormError error/>
                <button type="submit" class="button primary" disabled=move || register.pending().get()>
                    "Create account"
                </button>
            </ActionForm>
            <p class="muted small">"Already registered? " <a href="/login">"Sign in"</a></p>
        </AuthCard>
    }
}
