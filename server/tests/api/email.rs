//! Email (issue #20) through a real SMTP server on loopback (`server/tests/sdk/smtp_sink.py`,
//! PyPI `aiosmtpd`): an email channel's approval request reaches the members who can
//! decide, with the normalised request and a link that asks for a sign-in; an
//! invitation reaches the invitee. Runs when `AEGIS_SDK_PYTHON` names the test venv's python.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::approvals::asking_agent;
use crate::orgs::member;
use crate::support::TestServer;

const PUBLIC: &str = "https://aegis.example.com";

/// The Python SMTP sink: the messages it received, one JSON object each.
struct Sink {
    _child: tokio::process::Child,
    messages: mpsc::UnboundedReceiver<Value>,
    port: u16,
}

impl Sink {
    async fn start(python: &str) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/smtp_sink.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the SMTP sink starts");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first =
            tokio::time::timeout(Duration::from_secs(30), out.next_line()).await.unwrap().unwrap().unwrap();
        let port = first.strip_prefix("listening ").expect("listening <port>").parse().unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        Self { _child: child, messages, port }
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(15), self.messages.recv())
            .await
            .expect("an email arrives in time")
            .expect("the sink runs")
    }
}

#[tokio::test]
async fn email_approval_requests_reach_deciders_and_the_link_needs_a_sign_in() {
    let Some(python) = std::env::var("AEGIS_SDK_PYTHON").ok() else {
        eprintln!("SKIPPED email_…: AEGIS_SDK_PYTHON is not set");
        return;
    };
    let mut sink = Sink::start(&python).await;
    let mock = crate::mock::MockUpstream::start().await;
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_SMTP_URL", smtp.as_str()),
        ("AEGIS_SMTP_FROM", "AEGIS <aegis@example.com>"),
        ("AEGIS_PUBLIC_URL", PUBLIC),
    ])
    .await;
    let owner = s.sponsor("mail-owner").await;
    let approver = member(&s, &owner, "approver").await;
    let viewer = member(&s, &owner, "viewer").await;
    // Each member() sent the invitee an email with their link.
    for invitee in [&approver, &viewer] {
        let invitation = sink.next().await;
        assert_eq!(invitation["rcpt_tos"], json!([invitee.email]), "{invitation}");
        assert!(
            invitation["text"].as_str().unwrap().contains(&format!("{PUBLIC}/join?token=inv_")),
            "{invitation}"
        );
    }

    let r = s
        .post(
            "/api/channels",
            Some(&owner.access),
            json!({"kind": "email", "events": ["approval.requested"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["secret"], Value::Null);
    let r = s
        .post(
            "/api/channels",
            Some(&owner.access),
            json!({"kind": "email", "url": "https://x.example.com/", "events": ["approval.requested"]}),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"), "{}", r.text);

    // A parked call: one email, to the owner and the approver (not the viewer), each hidden from the other.
    let (_, key) = asking_agent(&s, &owner, "mailing-bot").await;
    let card = "4111111111111111";
    let r = s
        .execute(
            &key,
            json!({"method": "POST", "url": mock.url("/counted?order=9"), "body": format!("card={card}")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval = r.body["approval_id"].as_str().unwrap().to_owned();
    let mail = sink.next().await;
    let mut deciders = vec![owner.email.clone(), approver.email.clone()];
    deciders.sort();
    assert_eq!(mail["rcpt_tos"], json!(deciders), "{mail}");
    assert_eq!(mail["bcc"], Value::Null, "recipients do not see each other: {mail}");
    assert_eq!(mail["mail_from"], "aegis@example.com");
    let text = mail["text"].as_str().unwrap();
    for shown in ["POST", "/counted?order=9", "mailing-bot", "every call needs a human", "not shown here"] {
        assert!(text.contains(shown), "{shown} not in {text}");
    }
    assert!(!text.contains(card), "the body was emailed: {text}");
    assert!(mail["subject"].as_str().unwrap().starts_with("Approval requested: POST 127.0.0.1"), "{mail}");
    let link = format!("{PUBLIC}/approvals/{approval}");
    assert!(text.contains(&link), "{text}");

    // The link alone decides nothing and shows nothing: it asks for a sign-in.
    let anonymous = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = anonymous.get(link.replace(PUBLIC, &s.base)).send().await.unwrap();
    assert!(page.status().is_redirection(), "{}", page.status());
    let to = page.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("/login"), "{to}");
    assert!(!page.text().await.unwrap().contains("mailing-bot"));
    let r = s.get(&format!("/api/approvals/{approval}"), &owner.access).await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn email_channels_need_an_smtp_relay() {
    let s = TestServer::start().await;
    let owner = s.sponsor("no-mail").await;
    let r = s
        .post("/api/channels", Some(&owner.access), json!({"kind": "email", "events": ["budget.alert"]}))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "email_not_configured"), "{}", r.text);
}
