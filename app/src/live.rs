//! The dashboard's live layer: one WebSocket to `/ws` for the whole signed-in app.
//!
//! Every event bumps [`Live::tick`], which pages use as a resource source so their
//! numbers and lists refetch without a reload; the risky moments (an approval
//! requested, a breaker trip, a budget alert) also become toasts. The socket
//! reconnects with back-off (1 s doubling to 30 s), first touching the session so
//! an expired access cookie is refreshed, and passes the last event id as `since`
//! so nothing published while it was away is missed.

use leptos::prelude::*;
use serde::Deserialize;
use serde_json::Value;

/// One toast: what happened, how loud, and where to look.
#[derive(Debug, Clone, PartialEq)]
pub struct Toast {
    pub id: u64,
    /// `approval`, `breaker` or `budget`: picks the colour.
    pub tone: &'static str,
    pub title: String,
    pub detail: String,
    pub href: Option<String>,
}

#[derive(Clone, Copy)]
pub struct Live {
    /// Bumped on every event.
    pub tick: RwSignal<u64>,
    pub connected: RwSignal<bool>,
    pub toasts: RwSignal<Vec<Toast>>,
    last_id: StoredValue<Option<String>>,
    next_toast: StoredValue<u64>,
}

#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

impl Live {
    pub fn new() -> Self {
        Self {
            tick: RwSignal::new(0),
            connected: RwSignal::new(false),
            toasts: RwSignal::new(Vec::new()),
            last_id: StoredValue::new(None),
            next_toast: StoredValue::new(0),
        }
    }

    /// The app-wide instance (provided by the signed-in layout).
    pub fn get() -> Option<Self> {
        use_context::<Self>()
    }

    pub fn dismiss(&self, id: u64) {
        self.toasts.update(|t| t.retain(|t| t.id != id));
    }

    /// Handles one text frame.
    pub fn receive(&self, text: &str) {
        let Ok(event) = serde_json::from_str::<Event>(text) else { return };
        if event.kind == "heartbeat" {
            return;
        }
        self.last_id.set_value(Some(event.id.clone()));
        self.tick.update(|t| *t += 1);
        if let Some((tone, title, detail, href)) = toast_for(&event.kind, &event.data) {
            let id = self.next_toast.get_value();
            self.next_toast.set_value(id + 1);
            self.toasts.update(|t| {
                t.push(Toast { id, tone, title, detail, href });
                // The newest few; older ones are in the pages anyway.
                if t.len() > 4 {
                    t.remove(0);
                }
            });
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

type ToastParts = (&'static str, String, String, Option<String>);

fn toast_for(kind: &str, data: &Value) -> Option<ToastParts> {
    let s = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
    match kind {
        "approval.requested" => Some((
            "approval",
            "Approval needed".into(),
            format!("{} wants {} {}", s("agent_name"), s("method"), s("host")),
            Some("/approvals".into()),
        )),
        "breaker.tripped" => {
            Some(("breaker", "Circuit breaker tripped".into(), s("reason"), Some("/agents".into())))
        }
        "budget.alert" => Some((
            "budget",
            "Budget alert".into(),
            format!(
                "{} spend reached {}% of its limit",
                s("window"),
                data["threshold_pct"].as_i64().unwrap_or_default()
            ),
            Some("/agents".into()),
        )),
        _ => None,
    }
}

/// Opens the socket (in the browser only) and keeps it open.
#[cfg(feature = "hydrate")]
pub fn connect(live: Live) {
    let backoff = StoredValue::new(1000u32);
    open(live, backoff);
}

#[cfg(feature = "hydrate")]
fn open(live: Live, backoff: StoredValue<u32>) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;
    use web_sys::{CloseEvent, MessageEvent, WebSocket};

    let Some(window) = web_sys::window() else { return };
    let location = window.location();
    let scheme = if location.protocol().ok().as_deref() == Some("https:") { "wss" } else { "ws" };
    let host = location.host().unwrap_or_default();
    let url = match live.last_id.get_value() {
        Some(id) => format!("{scheme}://{host}/ws?since={id}"),
        None => format!("{scheme}://{host}/ws"),
    };
    let Ok(socket) = WebSocket::new(&url) else {
        retry(live, backoff);
        return;
    };
    let on_open = Closure::<dyn FnMut()>::new(move || {
        backoff.set_value(1000);
        live.connected.set(true);
    });
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        if let Some(text) = e.data().as_string() {
            live.receive(&text);
        }
    });
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
        live.connected.set(false);
        retry(live, backoff);
    });
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    // The socket lives as long as the page; so do its handlers.
    on_open.forget();
    on_message.forget();
    on_close.forget();
}

#[cfg(feature = "hydrate")]
fn retry(live: Live, backoff: StoredValue<u32>) {
    let delay = backoff.get_value();
    backoff.set_value((delay * 2).min(30_000));
    set_timeout(
        move || {
            leptos::task::spawn_local(async move {
                // Any server call passes the session middleware, which refreshes an
                // expired access cookie; the socket then authenticates again.
                let _ = crate::rpc::current_user().await;
                open(live, backoff);
            })
        },
        std::time::Duration::from_millis(u64::from(delay)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risky_events_become_toasts_and_others_do_not() {
        let data = serde_json::json!({"agent_name": "bot", "method": "POST", "host": "api.example.com"});
        let (tone, title, detail, href) = toast_for("approval.requested", &data).unwrap();
        assert_eq!(
            (tone, title.as_str(), href.as_deref()),
            ("approval", "Approval needed", Some("/approvals"))
        );
        assert_eq!(detail, "bot wants POST api.example.com");
        assert_eq!(toast_for("breaker.tripped", &serde_json::json!({"reason": "burst"})).unwrap().2, "burst");
        assert!(toast_for("agent.created", &data).is_none());
    }
}
