//! Entities match the migrated schema: insert through ActiveModels, read
//! back, compare; plus the partial unique index on live agent names and the
//! foreign-key cascades. Runs on SQLite always and on PostgreSQL when
//! `AEGIS_TEST_DATABASE_URL` is set.

#[path = "../../migration/tests/common/mod.rs"]
mod common;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use entity::prelude::*;
use entity::{agent_keys, agents, audit_events, policies, users, wallets};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Database, DatabaseConnection, EntityTrait,
    IntoActiveModel, ModelTrait, PaginatorTrait, QueryFilter,
};
use uuid::Uuid;

/// PostgreSQL keeps microseconds; compare like with like.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Inserts `model` as a fully `Set` ActiveModel, checks what `insert`
/// returns and what a fresh `find_by_id` (on primary-key field `$pk`)
/// reads back.
macro_rules! insert_and_check {
    ($db:expr, $module:ident, $model:expr, $pk:ident) => {{
        let model: $module::Model = $model;
        let inserted = model
            .clone()
            .into_active_model()
            .reset_all()
            .insert($db)
            .await
            .unwrap_or_else(|e| panic!("insert {}: {e}", stringify!($module)));
        assert_eq!(inserted, model, "insert returned a different {}", stringify!($module));
        let read = $module::Entity::find_by_id(model.$pk.clone())
            .one($db)
            .await
            .unwrap_or_else(|e| panic!("find {}: {e}", stringify!($module)))
            .unwrap_or_else(|| panic!("{} row not found", stringify!($module)));
        assert_eq!(read, model, "read back a different {}", stringify!($module));
        model
    }};
}

fn agent(sponsor_id: Uuid, policy_id: Option<Uuid>, name: &str) -> agents::Model {
    let t = now();
    agents::Model {
        id: Uuid::new_v4(),
        sponsor_id,
        name: name.to_owned(),
        description: Some("buys things".to_owned()),
        status: "active".to_owned(),
        policy_id,
        trust_score: 500,
        tags: r#"["shopping","eu"]"#.to_owned(),
        created_at: t,
        updated_at: t,
        suspended_at: None,
        suspended_reason: None,
        deleted_at: None,
        last_seen_at: Some(t - Duration::minutes(5)),
        rate_limits: Some(r#"{"tokens_per_minute":100}"#.into()),
    }
}

async fn roundtrip(db: &DatabaseConnection) {
    Migrator::up(db, None).await.expect("migrate");
    let t = now();

    let user = insert_and_check!(
        db,
        users,
        users::Model {
            id: Uuid::new_v4(),
            email: "ada@example.com".to_owned(),
            name: "Ada".to_owned(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            created_at: t,
            updated_at: t,
            disabled_at: None,
        },
        id
    );

    let policy = insert_and_check!(
        db,
        policies,
        policies::Model {
            id: Uuid::new_v4(),
            sponsor_id: Some(user.id),
            name: "default".to_owned(),
            description: None,
            builtin: false,
            current_version: 3,
            created_at: t,
            updated_at: t,
        },
        id
    );

    let first = insert_and_check!(db, agents, agent(user.id, Some(policy.id), "shopper"), id);

    let key = insert_and_check!(
        db,
        agent_keys,
        agent_keys::Model {
            id: Uuid::new_v4(),
            agent_id: first.id,
            key_id: "ak_0123456789".to_owned(),
            key_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
            created_at: t,
            revoked_at: None,
            last_used_at: Some(t),
        },
        id
    );

    let wallet = insert_and_check!(
        db,
        wallets,
        wallets::Model {
            agent_id: first.id,
            daily_limit_micros: 50_000_000,
            monthly_limit_micros: 9_000_000_000_000, // > i32::MAX: must be BIGINT
            daily_spent_micros: 1_250_000,
            monthly_spent_micros: 3_000_000_000,
            reserved_micros: 0,
            day_window: "2026-11-26".to_owned(),
            month_window: "2026-11".to_owned(),
            timezone: "Europe/Berlin".to_owned(),
            alert_threshold_pct: Some(80),
            alert_sent_day: None,
            alert_sent_month: Some("2026-11".to_owned()),
            updated_at: t,
        },
        agent_id
    );

    let event = insert_and_check!(
        db,
        audit_events,
        audit_events::Model {
            seq: 4_000_000_000, // application-assigned, > i32::MAX
            id: Uuid::new_v4(),
            at: t,
            sponsor_id: Some(user.id),
            agent_id: Some(first.id),
            request_id: Some("req_1".to_owned()),
            kind: "request".to_owned(),
            stage: Some("decided".to_owned()),
            decision: Some("allow".to_owned()),
            method: Some("GET".to_owned()),
            host: Some("api.example.com".to_owned()),
            path: Some("/v1/items".to_owned()),
            status: Some(200),
            cost_micros: 1_500,
            duration_us: 12_345,
            request_hash: Some("rh".to_owned()),
            policy_hash: Some("ph".to_owned()),
            policy_input: Some(r#"{"method":"GET"}"#.to_owned()),
            detail: None,
            prev_hash: "0".repeat(64),
            hash: "f".repeat(64),
        },
        seq
    );

    // Relations resolve.
    let keys = first.find_related(AgentKeys).all(db).await.unwrap();
    assert_eq!(keys, vec![key.clone()]);
    assert_eq!(wallet.find_related(Agents).one(db).await.unwrap(), Some(first.clone()));

    // Partial unique index: one *live* agent per (sponsor_id, name).
    let dup = agent(user.id, None, "shopper");
    let err = dup.clone().into_active_model().reset_all().insert(db).await;
    assert!(err.is_err(), "second live agent with the same name was accepted");

    let mut soft_delete = first.clone().into_active_model();
    soft_delete.deleted_at = Set(Some(now()));
    soft_delete.update(db).await.expect("soft-delete first agent");

    let second = insert_and_check!(db, agents, dup, id);
    assert_eq!(
        Agents::find()
            .filter(agents::Column::SponsorId.eq(user.id))
            .filter(agents::Column::Name.eq("shopper"))
            .count(db)
            .await
            .unwrap(),
        2
    );

    // A different sponsor may reuse the name while the first is live.
    let other = insert_and_check!(
        db,
        users,
        users::Model {
            id: Uuid::new_v4(),
            email: "bob@example.com".to_owned(),
            name: "Bob".to_owned(),
            password_hash: "x".to_owned(),
            created_at: t,
            updated_at: t,
            disabled_at: None,
        },
        id
    );
    insert_and_check!(db, agents, agent(other.id, None, "shopper"), id);

    // Unique email.
    let mut same_email = other.clone();
    same_email.id = Uuid::new_v4();
    assert!(
        same_email.into_active_model().reset_all().insert(db).await.is_err(),
        "duplicate email was accepted"
    );

    // Deleting the policy nulls agents.policy_id (ON DELETE SET NULL).
    Policies::delete_by_id(policy.id).exec(db).await.unwrap();
    let first_now = Agents::find_by_id(first.id).one(db).await.unwrap().unwrap();
    assert_eq!(first_now.policy_id, None);

    // Deleting the user cascades to agents, keys and wallets; audit survives.
    Users::delete_by_id(user.id).exec(db).await.unwrap();
    assert!(Agents::find_by_id(second.id).one(db).await.unwrap().is_none());
    assert!(Agents::find_by_id(first.id).one(db).await.unwrap().is_none());
    assert_eq!(AgentKeys::find().count(db).await.unwrap(), 0);
    assert_eq!(Wallets::find().count(db).await.unwrap(), 0);
    assert_eq!(AuditEvents::find_by_id(event.seq).one(db).await.unwrap(), Some(event));
    assert_eq!(Agents::find().count(db).await.unwrap(), 1); // Bob's

    // Every entity's columns exist in the migrated schema (SELECT of all
    // mapped columns on each table).
    Users::find().all(db).await.unwrap();
    RefreshFamilies::find().all(db).await.unwrap();
    RefreshTokens::find().all(db).await.unwrap();
    Policies::find().all(db).await.unwrap();
    PolicyVersions::find().all(db).await.unwrap();
    Agents::find().all(db).await.unwrap();
    AgentKeys::find().all(db).await.unwrap();
    Secrets::find().all(db).await.unwrap();
    SecretGrants::find().all(db).await.unwrap();
    Connections::find().all(db).await.unwrap();
    Wallets::find().all(db).await.unwrap();
    LedgerEntries::find().all(db).await.unwrap();
    Approvals::find().all(db).await.unwrap();
    AuditEvents::find().all(db).await.unwrap();
    AuditCheckpoints::find().all(db).await.unwrap();
    TrustEvents::find().all(db).await.unwrap();
    IdempotencyRecords::find().all(db).await.unwrap();
}

#[tokio::test]
async fn sqlite_entities_roundtrip() {
    let (_dir, db) = common::fresh_sqlite().await;
    roundtrip(&db).await;
    db.close().await.unwrap();
}

#[tokio::test]
async fn postgres_entities_roundtrip() {
    common::with_fresh_pg_db("PostgreSQL entity round-trip test", |url| async move {
        let db = Database::connect(&url).await.expect("connect to fresh db");
        roundtrip(&db).await;
        db.close().await.unwrap();
    })
    .await;
}
