//! Slack channels against a fake Slack on loopback (`AEGIS_SLACK_API_URL`): the
//! approval message, signed clicks back, linking, roles, and deciding once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::OriginalUri;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::approvals::asking_agent;
use crate::mock::MockUpstream;
use crate::orgs::member;
use crate::support::{Response, TestServer, read};

const BOT_TOKEN: &str = "xoxb-1111-2222-fakebottoken";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99feedbeef85";
const CONVERSATION: &str = "C0APPROVALS";
const TEAM: &str = "T0TEAM";

/// One Web API call the fake Slack received.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    authorization: String,
    body: Value,
}

struct FakeSlack {
    base: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeSlack {
    async fn start() -> Self {
        let calls: Arc<Mutex<Vec<Call>>> = Default::default();
        let seen = calls.clone();
        let app = axum::Router::new().fallback(
            move |uri: OriginalUri, headers: HeaderMap, Json(body): Json<Value>| {
                let seen = seen.clone();
                async move {
                    let method = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
                    let authorization = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut seen = seen.lock().unwrap();
                    let ts = format!("1700000000.{:06}", seen.len() + 1);
                    let channel = body["channel"].clone();
                    seen.push(Call { method, authorization, body });
                    Json(json!({"ok": true, "channel": channel, "ts": ts}))
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, calls }
    }

    fn calls(&self, method: &str) -> Vec<Call> {
        self.calls.lock().unwrap().iter().filter(|c| c.method == method).cloned().collect()
    }

    /// Waits for the `n`-th call of `method`.
    async fn nth(&self, method: &str, n: usize) -> Call {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = self.calls(method).get(n - 1) {
                return c.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {method} #{n}: {:?}",
                self.calls.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Slack's `v0` signature, computed here independently of the server's code.
fn signed(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A click on a button of the approval's message, as Slack posts it.
fn click_body(user: &str, action: &str, approval: &str) -> String {
    let payload = json!({
        "type": "block_actions", "team": {"id": TEAM}, "user": {"id": user, "username": user},
        "channel": {"id": CONVERSATION}, "container": {"type": "message", "message_ts": "1700000000.000001"},
        "actions": [{"action_id": action, "block_id": "aegis_decision", "value": approval, "type": "button"}],
    });
    url::form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish()
}

async fn post_click(
    s: &TestServer,
    path: &str,
    body: &str,
    ts: i64,
    signature: &str,
    retry: bool,
) -> Response {
    let mut req = s
        .http
        .post(s.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature);
    if retry {
        req = req.header("x-slack-retry-num", "1").header("x-slack-retry-reason", "http_timeout");
    }
    read(req.body(body.to_owned()).send().await.unwrap()).await
}

async fn click(s: &TestServer, path: &str, user: &str, action: &str, approval: &str) -> Response {
    let body = click_body(user, action, approval);
    let now = chrono::Utc::now().timestamp();
    post_click(s, path, &body, now, &signed(SIGNING_SECRET, now, &body), false).await
}

async fn status_of(s: &TestServer, token: &str, approval: &str) -> String {
    let r = s.get(&format!("/api/approvals/{approval}"), token).await;
    r.body["status"].as_str().unwrap_or_default().to_owned()
}

/// The code in a link offer Slack showed one user.
fn offered_code(call: &Call) -> String {
    let text = call.body["text"].as_str().unwrap();
    let at = text.find("slk_").expect("a link code");
    text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

async fn link(s: &TestServer, who: &crate::support::Sponsor, org: &str, token: &str) -> Response {
    let req = s
        .http
        .post(s.url("/api/slack/links"))
        .bearer_auth(&who.access)
        .header("x-aegis-org", org)
        .json(&json!({"token": token}));
    read(req.send().await.unwrap()).await
}

#[tokio::test]
async fn slack_approvals_are_posted_decided_by_linked_members_once_and_updated() {
    let slack = FakeSlack::start().await;
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_SLACK_API_URL", slack.base.as_str()),
        ("AEGIS_PUBLIC_URL", "https://aegis.example.com"),
    ])
    .await;
    let owner = s.sponsor("slack-owner").await;
    let org = owner.id.clone();

    // A Slack channel: the bot token and signing secret are never shown back.
    let r = s
        .post(
            "/api/channels",
            Some(&owner.access),
            json!({"kind": "slack", "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                   "slack_channel": CONVERSATION, "events": ["approval.requested", "approval.resolved"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["secret"], Value::Null);
    let channel = r.body["id"].as_str().unwrap().to_owned();
    let path = r.body["channel"]["interactivity_path"].as_str().unwrap().to_owned();
    assert_eq!(path, format!("/api/slack/channels/{channel}/interactions"));
    let listed = s.get("/api/channels", &owner.access).await;
    let audit = s.get("/api/audit?limit=200", &owner.access).await;
    for text in [&r.text, &listed.text, &audit.text] {
        assert!(!text.contains(BOT_TOKEN) && !text.contains(SIGNING_SECRET), "a Slack secret shown: {text}");
    }
    let r = s
        .post(
            "/api/channels",
            Some(&owner.access),
            json!({"kind": "slack", "bot_token": "xoxp-a-user-token", "signing_secret": SIGNING_SECRET,
                   "slack_channel": CONVERSATION, "events": ["approval.requested"]}),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"), "{}", r.text);

    // A parked call becomes a Block Kit message with the normalised request and two buttons.
    let (_, key) = asking_agent(&s, &owner, "payments-bot").await;
    let card = "4111111111111111";
    let r = s
        .execute(
            &key,
            json!({"method": "POST", "url": mock.url("/counted?invoice=7"), "body": format!("card={card}")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval = r.body["approval_id"].as_str().unwrap().to_owned();
    let posted = slack.nth("chat.postMessage", 1).await;
    assert_eq!(posted.authorization, format!("Bearer {BOT_TOKEN}"));
    assert_eq!(posted.body["channel"], CONVERSATION);
    let message = posted.body.to_string();
    for shown in ["POST", "/counted?invoice=7", "payments-bot", "every call needs a human", "$0.000000"] {
        assert!(message.contains(shown), "{shown} not in {message}");
    }
    assert!(!message.contains(card), "the body reached Slack: {message}");
    assert!(message.contains("not shown here"), "the body is marked as left out: {message}");
    assert!(message.contains(&format!("https://aegis.example.com/approvals/{approval}")), "{message}");
    let buttons: Vec<&str> = posted.body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["elements"].as_array())
        .flatten()
        .filter(|e| e["value"] == approval.as_str())
        .filter_map(|e| e["action_id"].as_str())
        .collect();
    assert_eq!(buttons, ["aegis_approve", "aegis_reject"]);

    // Not Slack: a wrong signature, an old timestamp, another channel's secret.
    let body = click_body("U0APPROVER", "aegis_approve", &approval);
    let now = chrono::Utc::now().timestamp();
    let r =
        post_click(&s, &path, &body, now, &signed("not-the-signing-secret-00000", now, &body), false).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "slack_signature_invalid"), "{}", r.text);
    let tampered = body.replace("aegis_approve", "aegis_reject");
    let r = post_click(&s, &path, &tampered, now, &signed(SIGNING_SECRET, now, &body), false).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "slack_signature_invalid"), "{}", r.text);
    let old = now - 600;
    let r = post_click(&s, &path, &body, old, &signed(SIGNING_SECRET, old, &body), false).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "slack_timestamp_stale"), "{}", r.text);
    let r = post_click(
        &s,
        "/api/slack/channels/00000000-0000-4000-8000-000000000000/interactions",
        &body,
        now,
        &signed(SIGNING_SECRET, now, &body),
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(status_of(&s, &owner.access, &approval).await, "pending");

    // An unlinked Slack user decides nothing: they alone are offered a link code.
    let r = click(&s, &path, "U0APPROVER", "aegis_approve", &approval).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let offer = slack.nth("chat.postEphemeral", 1).await;
    assert_eq!(
        (offer.body["user"].as_str(), offer.body["channel"].as_str()),
        (Some("U0APPROVER"), Some(CONVERSATION))
    );
    let code = offered_code(&offer);
    assert_eq!(status_of(&s, &owner.access, &approval).await, "pending");
    assert_eq!(mock.hits(), 0);

    // A viewer links their Slack user, but their clicks decide nothing.
    let viewer = member(&s, &owner, "viewer").await;
    click(&s, &path, "U0VIEWER", "aegis_approve", &approval).await;
    let viewer_code = offered_code(&slack.nth("chat.postEphemeral", 2).await);
    assert_eq!(link(&s, &viewer, &org, &viewer_code).await.status, StatusCode::OK);
    let r = click(&s, &path, "U0VIEWER", "aegis_approve", &approval).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let told = slack.nth("chat.postEphemeral", 3).await;
    assert_eq!(told.body["user"], "U0VIEWER");
    assert!(told.body["text"].as_str().unwrap().contains("role"), "{:?}", told.body);
    assert_eq!(status_of(&s, &owner.access, &approval).await, "pending");
    // Removed from the organization, their link is worth nothing: offered a new code.
    let r = s
        .send(http::Method::DELETE, &format!("/api/orgs/members/{}", viewer.id), Some(&owner.access), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    click(&s, &path, "U0VIEWER", "aegis_approve", &approval).await;
    let offered = slack.nth("chat.postEphemeral", 4).await;
    assert_eq!(offered.body["user"], "U0VIEWER");
    assert!(offered.body["text"].as_str().unwrap().contains("not linked"), "{:?}", offered.body);
    assert_eq!(status_of(&s, &owner.access, &approval).await, "pending");

    // The approver redeems the code once, signed in; another organization cannot.
    let approver = member(&s, &owner, "approver").await;
    let outsider = s.sponsor("slack-outsider").await;
    let r = link(&s, &outsider, &outsider.id, &code).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "slack_link_invalid"), "{}", r.text);
    let r = link(&s, &approver, &org, &code).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"team_id": TEAM, "slack_user_id": "U0APPROVER"}));
    let r = link(&s, &approver, &org, &code).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "slack_link_invalid"), "single use: {}", r.text);

    // A disabled account's link decides nothing (it cannot sign in either).
    let set_disabled = |at: Option<chrono::DateTime<chrono::Utc>>| {
        let (db, id) = (s.running.services.db.clone(), approver.id.parse::<uuid::Uuid>().unwrap());
        async move {
            use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
            entity::users::Entity::update_many()
                .col_expr(entity::users::Column::DisabledAt, Expr::value(at))
                .filter(entity::users::Column::Id.eq(id))
                .exec(&db)
                .await
                .unwrap();
        }
    };
    set_disabled(Some(chrono::Utc::now())).await;
    click(&s, &path, "U0APPROVER", "aegis_approve", &approval).await;
    let told = slack.nth("chat.postEphemeral", 5).await;
    assert!(told.body["text"].as_str().unwrap().contains("disabled"), "{:?}", told.body);
    assert_eq!(status_of(&s, &owner.access, &approval).await, "pending");
    set_disabled(None).await;

    // The approver's click decides, as the approver; the message shows who.
    let r = click(&s, &path, "U0APPROVER", "aegis_approve", &approval).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while status_of(&s, &owner.access, &approval).await != "approved" {
        assert!(tokio::time::Instant::now() < deadline, "never approved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = s.get(&format!("/api/approvals/{approval}"), &owner.access).await;
    assert_eq!(r.body["decided_by"], approver.id.as_str(), "{}", r.text);
    let updated = slack.nth("chat.update", 1).await;
    assert_eq!(
        (updated.body["channel"].as_str(), updated.body["ts"].as_str()),
        (Some(CONVERSATION), Some("1700000000.000001"))
    );
    assert!(updated.body["text"].as_str().unwrap().contains("Approved by"), "{:?}", updated.body);
    assert!(!updated.body.to_string().contains("aegis_approve"), "no buttons once decided");

    // Slack's retry of that click and a second click decide nothing more.
    let body = click_body("U0APPROVER", "aegis_approve", &approval);
    let now = chrono::Utc::now().timestamp();
    let r = post_click(&s, &path, &body, now, &signed(SIGNING_SECRET, now, &body), true).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    click(&s, &path, "U0APPROVER", "aegis_reject", &approval).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.hits(), 1, "performed once");
    assert_eq!(status_of(&s, &owner.access, &approval).await, "approved");
    let decided: Vec<Value> = s.get("/api/audit?limit=200", &owner.access).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "approval.approved")
        .cloned()
        .collect();
    assert_eq!(decided.len(), 1, "{decided:?}");
    let detail: Value = serde_json::from_str(decided[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        (detail["approver"].as_str(), detail["approver_role"].as_str()),
        (Some(approver.id.as_str()), Some("approver"))
    );
    let linked = s.get("/api/audit?kind=channel.slack_linked", &owner.access).await;
    assert_eq!(linked.body["items"].as_array().unwrap().len(), 2, "{}", linked.text);

    // Nothing Slack received carries a secret or the body.
    let everything = format!("{:?}", slack.calls.lock().unwrap());
    assert!(!everything.contains(card) && !everything.contains(SIGNING_SECRET), "{everything}");
}
