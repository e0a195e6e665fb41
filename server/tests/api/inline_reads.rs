//! The proxy's per-call reads (the agent's key, its wallet, its policy's current
//! version, the granted secret, a gateway's connection) run inline on a SQLite file: they must return
//! exactly what sea-orm reads from the same rows, see every change at once, and
//! really be the path the proxy takes.

use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::mock::MockUpstream;
use crate::observability::{sample, scrape};
use crate::support::TestServer;

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

async fn inline_reads(s: &TestServer) -> f64 {
    sample(&scrape(s).await, "aegis_db_inline_reads_total", &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn the_hot_path_reads_see_exactly_what_sea_orm_sees() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let services = &s.running.services;
    let db = &services.db;
    let sponsor = s.sponsor("inline").await;
    let sponsor_id: Uuid = sponsor.id.parse().unwrap();
    let (id, key) = s
        .agent_with(
            &sponsor,
            json!({"name": "reader", "description": "reads things", "policy": "permissive",
                   "daily_limit_micros": 5_000_000, "monthly_limit_micros": 9_000_000, "tags": ["a", "b"]}),
        )
        .await;
    let agent_id: Uuid = id.parse().unwrap();
    let created = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": "api", "value": "v-1", "allowed_hosts": ["http://127.0.0.1:*"],
                   "inject": {"header": "Authorization", "format": "Bearer {secret}"}, "agents": [id]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let secret_id: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    for body in [
        json!({"name": "gw", "base_url": mock.url("/echo"), "secret": "api", "cost_micros": 10}),
        json!({"name": "plain", "base_url": mock.url("/echo")}),
    ] {
        let r = s.post("/api/connections", Some(&sponsor.access), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }

    // One performed call with a secret: exactly four reads inline on SQLite, none on PostgreSQL.
    let before = inline_reads(&s).await;
    let r = s
        .execute(
            &key,
            json!({"method": "GET", "url": mock.url("/echo"), "secret": "api", "cost_micros": 1_234}),
        )
        .await;
    assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    let done = inline_reads(&s).await - before;
    // And a gateway call: one more, its connection.
    let before = inline_reads(&s).await;
    let gw = s.http.get(s.url("/api/gw/gw/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(gw.status(), StatusCode::OK);
    let gateway_done = inline_reads(&s).await - before;
    if s.on_postgres() {
        assert!(services.sqlite_reads.is_none());
        assert_eq!((done, gateway_done), (0.0, 0.0), "PostgreSQL reads through sea-orm");
        eprintln!("this pass runs on PostgreSQL: the reads below go through sea-orm (no inline path)");
    } else {
        assert!(services.sqlite_reads.is_some());
        assert_eq!(done, 4.0, "key, wallet, policy version, secret");
        assert_eq!(gateway_done, 5.0, "key, connection, wallet, policy version, secret");
    }

    // Each read equals sea-orm's read of the same row, field for field — including
    // optional times and ids, set and unset.
    let agent_row = || async { entity::agents::Entity::find_by_id(agent_id).one(db).await.unwrap().unwrap() };
    let authenticated = || async { services.agents.authenticate(&key).await.unwrap() };
    let principal = authenticated().await.expect("the live key authenticates");
    assert_eq!(principal.agent, agent_row().await);
    let key_row = entity::agent_keys::Entity::find()
        .filter(entity::agent_keys::Column::AgentId.eq(agent_id))
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(principal.key_id, key_row.key_id);

    let suspended = s
        .post(&format!("/api/agents/{id}/suspend"), Some(&sponsor.access), json!({"reason": "checking"}))
        .await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text);
    let principal = authenticated().await.unwrap();
    assert!(principal.agent.suspended_at.is_some());
    assert_eq!(principal.agent, agent_row().await);

    let wallet = services.wallets.get(agent_id).await.unwrap().unwrap();
    assert_eq!(wallet.daily_spent_micros, 1_234 + 10, "the settled calls are read at once");
    assert_eq!(Some(wallet), entity::wallets::Entity::find_by_id(agent_id).one(db).await.unwrap());
    assert_eq!(services.wallets.get(Uuid::new_v4()).await.unwrap(), None);

    let granted = || async { services.secrets.granted(sponsor_id, agent_id, "api").await.unwrap() };
    let secret_row = || async { entity::secrets::Entity::find_by_id(secret_id).one(db).await.unwrap() };
    assert_eq!(granted().await, secret_row().await);
    let rotated = s
        .send(
            Method::PUT,
            &format!("/api/secrets/{secret_id}"),
            Some(&sponsor.access),
            Some(json!({"value": "v-2"})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let after = granted().await.unwrap();
    assert!(after.rotated_at.is_some());
    assert_eq!(Some(after), secret_row().await, "the rotated value is read at once");
    assert_eq!(
        services.secrets.granted(Uuid::new_v4(), agent_id, "api").await.unwrap(),
        None,
        "another sponsor"
    );
    assert_eq!(services.secrets.granted(sponsor_id, agent_id, "other").await.unwrap(), None);
    let revoke = s
        .send(Method::DELETE, &format!("/api/secrets/{secret_id}/agents/{id}"), Some(&sponsor.access), None)
        .await;
    assert!(revoke.status.is_success(), "{}", revoke.text);
    assert_eq!(granted().await, None, "a revoked grant is gone at once");

    for (name, secret) in [("gw", Some("api")), ("plain", None)] {
        let (connection, secret_name) =
            services.connections.by_name(sponsor_id, name).await.unwrap().unwrap();
        let row = entity::connections::Entity::find_by_id(connection.id).one(db).await.unwrap();
        assert_eq!((Some(connection), secret_name.as_deref()), (row, secret));
    }
    assert!(services.connections.by_name(sponsor_id, "nope").await.unwrap().is_none());
    assert!(services.connections.by_name(Uuid::new_v4(), "gw").await.unwrap().is_none(), "another sponsor");

    let version = services.policies.source_for(principal.agent.policy_id).await.unwrap();
    let current = entity::policies::Entity::find_by_id(principal.agent.policy_id.unwrap())
        .one(db)
        .await
        .unwrap()
        .unwrap()
        .current_version;
    assert_eq!(version.version, current);

    // A rotated key stops working at once; a deleted agent's key does not authenticate.
    let rotated = s.send(Method::POST, &format!("/api/agents/{id}/keys"), Some(&sponsor.access), None).await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    assert!(authenticated().await.is_none(), "the old key is revoked");
    let new_key = rotated.body["api_key"].as_str().unwrap().to_owned();
    assert_eq!(services.agents.authenticate(&new_key).await.unwrap().unwrap().agent, agent_row().await);
    let deleted = s.send(Method::DELETE, &format!("/api/agents/{id}"), Some(&sponsor.access), None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    assert!(agent_row().await.deleted_at.is_some());
    assert!(services.agents.authenticate(&new_key).await.unwrap().is_none());
}
