//! Real-time events over `GET /ws`: real WebSocket clients on loopback.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Sponsor, TestServer};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const REDIS_VAR: &str = "AEGIS_TEST_REDIS_URL";

/// A socket authenticated by `Authorization: Bearer` (never a token in the URL).
async fn connect(s: &TestServer, token: &str, query: &str) -> Ws {
    let mut req = format!("ws://{}/ws?{query}", s.running.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(req).await.expect("WebSocket upgrade");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn listen(s: &TestServer, sponsor: &Sponsor) -> Ws {
    connect(s, &sponsor.access, "").await
}

/// The next event, skipping heartbeats; fails after 10 s.
async fn next_event(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("an event within 10 s")
            .expect("socket open")
            .expect("socket healthy");
        if let Message::Text(text) = message {
            let v: Value = serde_json::from_str(&text).expect("JSON text frame");
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }
}

/// Asserts nothing but heartbeats arrives for a while.
async fn assert_quiet(ws: &mut Ws, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while let Ok(message) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Some(Ok(Message::Text(text))) = message {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "heartbeat", "{what}: unexpected {v}");
        }
    }
}

async fn create_agent(s: &TestServer, sponsor: &Sponsor, name: &str) -> (String, String) {
    let (agent, key) = s.agent(sponsor, name).await;
    (agent["id"].as_str().unwrap().to_owned(), key)
}

#[tokio::test]
async fn sponsors_receive_their_own_events_only() {
    let s = TestServer::start().await;
    let a = s.sponsor("ev-a").await;
    let b = s.sponsor("ev-b").await;
    let mut wa = listen(&s, &a).await;
    let mut wb = listen(&s, &b).await;

    let (id, key) = create_agent(&s, &a, "watched").await;
    let created = next_event(&mut wa).await;
    assert_eq!(created["type"], "agent.created", "{created}");
    assert_eq!(created["sponsor_id"], a.id.as_str());
    assert_eq!(created["agent_id"], id.as_str());
    assert_eq!(created["data"]["name"], "watched");
    assert!(created["link"]["audit_seq"].is_i64(), "{created}");
    assert!(created["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(created["time"].as_str().unwrap()).is_ok());
    let text = created.to_string();
    assert!(!text.contains(&key) && !text.contains("api_key"), "the key leaked: {text}");

    s.post(&format!("/api/agents/{id}/suspend"), Some(&a.access), json!({"reason": "odd"})).await;
    let suspended = next_event(&mut wa).await;
    assert_eq!(
        (suspended["type"].as_str(), suspended["data"]["reason"].as_str()),
        (Some("agent.suspended"), Some("odd"))
    );

    // A suspended agent's call is denied by the breaker, and announced.
    let r = s
        .post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": "https://example.com/"}))
        .await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("breaker")), "{}", r.text);
    let denied = next_event(&mut wa).await;
    assert_eq!(denied["type"], "proxy.denied", "{denied}");
    assert_eq!(denied["agent_id"], id.as_str());
    assert_eq!(denied["data"]["stage"], "breaker");
    assert!(denied["data"]["reason"].as_str().unwrap().contains("odd"));
    assert_eq!(denied["link"]["audit_seq"], r.body["audit_seq"]);
    assert_eq!(denied["data"]["request_id"], r.body["request_id"]);
    assert!(!denied.to_string().contains(&key));

    s.post(&format!("/api/agents/{id}/resume"), Some(&a.access), json!({})).await;
    assert_eq!(next_event(&mut wa).await["type"], "agent.resumed");
    let r = s.send(reqwest::Method::DELETE, &format!("/api/agents/{id}"), Some(&a.access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(next_event(&mut wa).await["type"], "agent.deleted");

    // B, listening all along, saw none of it; its own agent it does see.
    let (b_agent, _) = create_agent(&s, &b, "other").await;
    let first = next_event(&mut wb).await;
    assert_eq!(
        (first["type"].as_str(), first["agent_id"].as_str()),
        (Some("agent.created"), Some(b_agent.as_str()))
    );
    assert_eq!(first["sponsor_id"], b.id.as_str());
    assert_quiet(&mut wb, "sponsor B").await;
    assert_quiet(&mut wa, "sponsor A").await;

    // Pings are answered.
    wa.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match wa.next().await {
                Some(Ok(Message::Pong(p))) => break p,
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
}

#[tokio::test]
async fn since_replays_what_a_reconnecting_dashboard_missed() {
    let s = TestServer::start().await;
    let a = s.sponsor("ev-since").await;
    let mut ws = listen(&s, &a).await;
    create_agent(&s, &a, "first").await;
    let seen = next_event(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(ws);

    // Missed while away.
    let (second, _) = create_agent(&s, &a, "second").await;
    s.post(&format!("/api/agents/{second}/suspend"), Some(&a.access), json!({})).await;

    let mut ws = connect(&s, &a.access, &format!("since={}", seen["id"].as_str().unwrap())).await;
    let replayed = next_event(&mut ws).await;
    assert_eq!(
        (replayed["type"].as_str(), replayed["agent_id"].as_str()),
        (Some("agent.created"), Some(second.as_str()))
    );
    let replayed2 = next_event(&mut ws).await;
    assert_eq!(replayed2["type"], "agent.suspended");
    assert!(replayed2["id"].as_str().unwrap() > replayed["id"].as_str().unwrap(), "ids are time-ordered");
    assert_quiet(&mut ws, "after the replay").await;
    // And live events follow the replay.
    s.post(&format!("/api/agents/{second}/resume"), Some(&a.access), json!({})).await;
    assert_eq!(next_event(&mut ws).await["type"], "agent.resumed");

    // Without `since`, nothing old is replayed.
    let mut fresh = listen(&s, &a).await;
    assert_quiet(&mut fresh, "no since").await;
}

#[tokio::test]
async fn sockets_without_a_valid_token_are_refused() {
    let s = TestServer::start().await;
    let a = s.sponsor("ev-auth").await;
    for query in ["", "since="] {
        let url = format!("ws://{}/ws?{query}", s.running.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{query}");
                let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or(b"")).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{query}");
            }
            other => panic!("{query:?}: expected a refused upgrade, got {other:?}"),
        }
    }
    // A signed-out session's token stops working at once.
    let other = s.sponsor("ev-auth-out").await;
    let r = s.post("/api/auth/logout", Some(&other.access), json!({})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let mut req = format!("ws://{}/ws", s.running.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", other.access).parse().unwrap());
    assert!(matches!(
        tokio_tungstenite::connect_async(req).await,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == StatusCode::UNAUTHORIZED
    ));

    // Plain HTTP (no upgrade): the same JSON error; with a token, a clear 4xx.
    let r = crate::support::read(s.http.get(s.url("/ws")).send().await.unwrap()).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let r = s.get("/ws", &a.access).await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
    assert_eq!(r.code(), "websocket_required");
    let r = s.get("/ws?since=yesterday", &a.access).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_query"));

    // The dashboard's cookie works from its own origin, not from another site.
    let cookie_request = |origin: &str| {
        let mut req = format!("ws://{}/ws", s.running.addr).into_client_request().unwrap();
        req.headers_mut().insert("cookie", format!("aegis_at={}", a.access).parse().unwrap());
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    let own = format!("http://{}", s.running.addr);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(cookie_request(&own)).await.expect("same-origin cookie");
    create_agent(&s, &a, "via-cookie").await;
    assert_eq!(next_event(&mut ws).await["type"], "agent.created");
    match tokio_tungstenite::connect_async(cookie_request("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), StatusCode::FORBIDDEN),
        other => panic!("cross-site cookie socket accepted: {other:?}"),
    }
}

/// Waits (up to 30 s: the reconnect back-off) until the server's Redis fan-out reports `want`.
async fn redis_state(s: &TestServer, want: bool) {
    for _ in 0..600 {
        if s.running.services.events.redis_connected() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Redis fan-out never became connected={want}");
}

#[tokio::test]
async fn events_cross_replicas_through_redis() {
    let Ok(redis_url) = std::env::var(REDIS_VAR).map(|v| v.trim().to_owned()) else {
        println!(
            "skipped: {REDIS_VAR} not set (set it to e.g. redis://127.0.0.1:6379 to run the Redis test)"
        );
        return;
    };
    if redis_url.is_empty() {
        println!(
            "skipped: {REDIS_VAR} is empty (set it to e.g. redis://127.0.0.1:6379 to run the Redis test)"
        );
        return;
    }
    let vars = [("REDIS_URL", redis_url.as_str())];
    let one = TestServer::start_with(&vars).await;
    let two = TestServer::start_sharing(&one, &vars).await;
    redis_state(&one, true).await;
    redis_state(&two, true).await;

    let a = one.sponsor("ev-redis").await;
    let mut on_two = listen(&two, &a).await;
    let (id, _) = create_agent(&one, &a, "made-on-one").await;
    let e = next_event(&mut on_two).await;
    assert_eq!((e["type"].as_str(), e["agent_id"].as_str()), (Some("agent.created"), Some(id.as_str())));
    assert_quiet(&mut on_two, "one event, delivered once").await;
    drop(on_two);

    // Replica two's buffer holds replica one's events, so `since` works there too.
    one.post(&format!("/api/agents/{id}/suspend"), Some(&a.access), json!({})).await;
    let mut replay = connect(&two, &a.access, &format!("since={}", e["id"].as_str().unwrap())).await;
    assert_eq!(next_event(&mut replay).await["type"], "agent.suspended");
}

#[tokio::test]
async fn an_unreachable_redis_leaves_events_in_process() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let s = TestServer::start_with(&[("REDIS_URL", url.as_str())]).await;
    redis_state(&s, false).await;
    let a = s.sponsor("ev-noredis").await;
    let mut ws = listen(&s, &a).await;
    let (id, _) = create_agent(&s, &a, "still-heard").await;
    let e = next_event(&mut ws).await;
    assert_eq!((e["type"].as_str(), e["agent_id"].as_str()), (Some("agent.created"), Some(id.as_str())));
    assert_eq!(s.running.services.events.redis_connected(), Some(false));
}

/// A throw-away `redis-server` on `port`, stopped when dropped.
fn redis_server(port: u16) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server")
}

#[tokio::test]
async fn fan_out_resumes_when_redis_comes_back() {
    if std::env::var(REDIS_VAR).is_err() {
        println!("skipped: {REDIS_VAR} not set (this test also needs redis-server on PATH)");
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let vars = [("REDIS_URL", url.as_str())];
    // Both replicas start while Redis is down, and serve anyway.
    let one = TestServer::start_with(&vars).await;
    let two = TestServer::start_sharing(&one, &vars).await;
    redis_state(&one, false).await;
    let a = one.sponsor("ev-outage").await;
    let mut on_one = listen(&one, &a).await;
    create_agent(&one, &a, "during-outage").await;
    assert_eq!(next_event(&mut on_one).await["type"], "agent.created");

    // Redis arrives: both replicas connect on their own and fan out across.
    let mut redis = redis_server(port);
    redis_state(&one, true).await;
    redis_state(&two, true).await;
    let mut on_two = listen(&two, &a).await;
    let (id, _) = create_agent(&one, &a, "after-recovery").await;
    let e = next_event(&mut on_two).await;
    assert_eq!((e["type"].as_str(), e["agent_id"].as_str()), (Some("agent.created"), Some(id.as_str())));
    assert_eq!(next_event(&mut on_one).await["agent_id"], id.as_str());

    // Redis goes away again: local delivery carries on.
    redis.kill().await.unwrap();
    redis_state(&one, false).await;
    one.post(&format!("/api/agents/{id}/suspend"), Some(&a.access), json!({})).await;
    assert_eq!(next_event(&mut on_one).await["type"], "agent.suspended");
}

/// An open socket does not outlive its session: signing out closes it (code 4401)
/// at the next heartbeat.
#[tokio::test]
async fn signing_out_closes_open_sockets() {
    let s = TestServer::start_with(&[("AEGIS_WS_HEARTBEAT_SECS", "1")]).await;
    let sponsor = s.sponsor("leaver").await;
    let mut ws = listen(&s, &sponsor).await;
    let r = s.post("/api/auth/logout", Some(&sponsor.access), json!({})).await;
    assert!(r.status.is_success(), "{}", r.text);
    assert_closed_as_ended(&mut ws, "sign-out", &[]).await;
}

/// The socket closes with 4401 within 5 s, carrying nothing but heartbeats (and
/// events of the `allowed` types) first.
async fn assert_closed_as_ended(ws: &mut Ws, after: &str, allowed: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("closed within 5 s") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4401);
                break;
            }
            Some(Ok(Message::Text(t))) => {
                let kind =
                    serde_json::from_str::<Value>(&t).unwrap()["type"].as_str().unwrap_or("").to_owned();
                assert!(
                    kind == "heartbeat" || allowed.contains(&kind.as_str()),
                    "no events after {after}: {t}"
                )
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn refused_status(
    result: Result<(Ws, impl std::fmt::Debug), tokio_tungstenite::tungstenite::Error>,
) -> (StatusCode, Value) {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body =
                serde_json::from_slice(response.body().as_deref().unwrap_or(b"")).unwrap_or(Value::Null);
            (response.status(), body)
        }
        Err(other) => panic!("expected a refused upgrade, got {other:?}"),
        Ok(_) => panic!("expected a refused upgrade, got a socket"),
    }
}

/// Tokens stay out of URLs (and so out of proxy and access logs): `?token=` is
/// refused even with a valid token; the subprotocol `aegis.bearer.<token>` (what a
/// browser script can send) works, and the server selects `aegis.events` without
/// echoing the token; a bad token there is 401.
#[tokio::test]
async fn tokens_travel_in_headers_not_urls() {
    let s = TestServer::start().await;
    let a = s.sponsor("ev-url").await;
    let url = format!("ws://{}/ws?token={}", s.running.addr, a.access);
    let (status, body) = refused_status(tokio_tungstenite::connect_async(url).await);
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("token_in_url")));

    let with_protocols = |protocols: String| {
        let mut req = format!("ws://{}/ws", s.running.addr).into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
        req
    };
    let (mut ws, response) =
        tokio_tungstenite::connect_async(with_protocols(format!("aegis.events, aegis.bearer.{}", a.access)))
            .await
            .expect("subprotocol token accepted");
    assert_eq!(response.headers()["sec-websocket-protocol"], "aegis.events");
    create_agent(&s, &a, "via-subprotocol").await;
    assert_eq!(next_event(&mut ws).await["type"], "agent.created");
    let (status, body) = refused_status(
        tokio_tungstenite::connect_async(with_protocols("aegis.events, aegis.bearer.nope".into())).await,
    );
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
}

/// One session may hold a bounded number of sockets; closing one frees its place.
#[tokio::test]
async fn sockets_per_session_are_capped() {
    let s = TestServer::start().await;
    let a = s.sponsor("ev-cap").await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(listen(&s, &a).await);
    }
    let mut req = format!("ws://{}/ws", s.running.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", a.access).parse().unwrap());
    let (status, body) = refused_status(tokio_tungstenite::connect_async(req.clone()).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_sockets"))
    );
    // Another session of the same sponsor has its own allowance.
    let login = s
        .post("/api/auth/login", None, json!({"email": a.email, "password": crate::support::PASSWORD}))
        .await;
    let other = login.body["access_token"].as_str().unwrap().to_owned();
    let _fresh = connect(&s, &other, "").await;
    // Closing a socket gives its place back (once the server has seen the close).
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(req.clone()).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the place was not given back: {e:?}"),
        }
    }
}

/// Clients only send pings: a message beyond a few KB closes the socket.
#[tokio::test]
async fn oversized_client_messages_close_the_socket() {
    let s = TestServer::start().await;
    let a = s.sponsor("ev-size").await;
    let mut ws = listen(&s, &a).await;
    ws.send(Message::Text("x".repeat(1024).into())).await.unwrap();
    create_agent(&s, &a, "still-open").await;
    assert_eq!(next_event(&mut ws).await["type"], "agent.created", "small messages are fine");
    let _ = ws.send(Message::Text("x".repeat(64 * 1024).into())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("closed within 10 s") {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue,
        }
    }
}

/// A member's socket streams the organization `?org=` names; membership changes are
/// events too; someone outside the organization cannot open its stream, and a
/// removed member's socket closes.
#[tokio::test]
async fn a_members_socket_streams_the_organization_it_names() {
    let s = TestServer::start_with(&[("AEGIS_WS_HEARTBEAT_SECS", "1")]).await;
    let owner = s.sponsor("owner").await;
    let mut owners = listen(&s, &owner).await;
    let viewer = crate::orgs::member(&s, &owner, "viewer").await;
    let joined = next_event(&mut owners).await;
    assert_eq!(joined["type"], "org.member_joined", "{joined}");
    assert_eq!(
        (joined["data"]["member"].as_str(), joined["data"]["role"].as_str()),
        (Some(viewer.id.as_str()), Some("viewer"))
    );

    let mut theirs = connect(&s, &viewer.access, &format!("org={}", owner.id)).await;
    let mut own = listen(&s, &viewer).await;
    let (agent, _) = s.agent(&owner, "shared").await;
    let e = next_event(&mut theirs).await;
    assert_eq!((e["type"].as_str(), &e["agent_id"]), (Some("agent.created"), &agent["id"]), "{e}");
    assert_eq!(next_event(&mut owners).await["type"], "agent.created");
    assert_quiet(&mut own, "the viewer's own organization").await;

    // Not a member: no stream of that organization.
    let outsider = s.sponsor("outsider").await;
    let mut req = format!("ws://{}/ws?org={}", s.running.addr, owner.id).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", outsider.access).parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND)
        }
        other => panic!("an outsider's upgrade was not refused: {:?}", other.map(|(_, r)| r.status())),
    }

    // Removing the viewer is an event naming who did it.
    let r = s
        .send(reqwest::Method::DELETE, &format!("/api/orgs/members/{}", viewer.id), Some(&owner.access), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let removed = next_event(&mut owners).await;
    assert_eq!(removed["type"], "org.member_removed", "{removed}");
    assert_eq!(removed["data"]["by"], json!({"member": owner.id, "role": "owner"}), "{removed}");
    // …and the removed member's socket on that organization closes at its next
    // heartbeat (the news of their own removal may reach it first).
    assert_closed_as_ended(&mut theirs, "removal", &["org.member_removed"]).await;
}
