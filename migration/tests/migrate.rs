//! Migrations apply, are idempotent and round-trip on SQLite and PostgreSQL.

mod common;

use migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use migration::{Migrator, MigratorTrait, SchemaManager};

/// Every table the initial migration must create. Kept independent of the
/// migration's own list on purpose.
const TABLES: [&str; 27] = [
    "users",
    "refresh_families",
    "refresh_tokens",
    "policies",
    "policy_versions",
    "agents",
    "agent_keys",
    "secrets",
    "secret_grants",
    "connections",
    "wallets",
    "ledger_entries",
    "approvals",
    "audit_events",
    "audit_checkpoints",
    "trust_events",
    "idempotency_records",
    "breakers",
    "organizations",
    "memberships",
    "invitations",
    "approval_votes",
    "channels",
    "channel_deliveries",
    "slack_links",
    "slack_link_tokens",
    "slack_messages",
];

/// A sample of named indexes, one per kind (plain, composite, unique, raw SQL).
const INDEXES: [(&str, &str); 9] = [
    ("agents", "ux_agents_sponsor_name_live"),
    ("agents", "ix_agents_sponsor_id_created_at"),
    ("policy_versions", "ux_policy_versions_policy_id_version"),
    ("secrets", "ux_secrets_sponsor_id_name"),
    ("ledger_entries", "ix_ledger_entries_status_expires_at"),
    ("audit_events", "ix_audit_events_kind_seq"),
    ("approvals", "ix_approvals_status_expires_at"),
    ("approvals", "ix_approvals_status_decided_at"),
    ("idempotency_records", "ix_idempotency_records_created_at"),
];

/// How many migrations there are (the initial schema, the audit guards, breakers,
/// the approvals' plain columns and retention indexes, the chain-head function, the
/// connections' pricing, usage, MCP, organizations, the two-person rule, channels, Slack).
const MIGRATIONS: usize = 12;
/// The organizations migration's place in the list (1-based).
const ORGANIZATIONS_AT: u32 = 9;

async fn assert_tables(db: &DatabaseConnection, present: bool) {
    let manager = SchemaManager::new(db);
    for table in TABLES {
        let has = manager.has_table(table).await.unwrap_or_else(|e| panic!("has_table({table}): {e}"));
        assert_eq!(has, present, "table {table} present={has}, expected {present}");
    }
    if present {
        for (table, index) in INDEXES {
            let has = manager
                .has_index(table, index)
                .await
                .unwrap_or_else(|e| panic!("has_index({table}, {index}): {e}"));
            assert!(has, "index {index} on {table} is missing");
        }
    }
}

/// Accounts made before organizations existed each become the owner of a
/// one-member organization with the account's id (so `sponsor_id` names it).
async fn existing_accounts_become_owners(db: &DatabaseConnection) {
    Migrator::up(db, Some(ORGANIZATIONS_AT - 1)).await.expect("up to the one before organizations");
    for (id, name) in
        [("0190a000-0000-7000-8000-00000000000a", "Ada"), ("0190a000-0000-7000-8000-00000000000b", "Bo")]
    {
        db.execute_unprepared(&format!(
            "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) \
             VALUES ('{id}', '{name}@example.com', '{name}', 'x', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
        ))
        .await
        .unwrap();
    }
    Migrator::up(db, None).await.expect("organizations");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT o.name, m.role FROM users u JOIN organizations o ON o.id = u.id \
             JOIN memberships m ON m.org_id = o.id AND m.user_id = u.id ORDER BY o.name",
        ))
        .await
        .unwrap();
    let got: Vec<(String, String)> =
        rows.iter().map(|r| (r.try_get("", "name").unwrap(), r.try_get("", "role").unwrap())).collect();
    assert_eq!(got, [("Ada".to_owned(), "owner".to_owned()), ("Bo".to_owned(), "owner".to_owned())]);
    Migrator::down(db, None).await.expect("down");
}

async fn migrate_roundtrip(db: &DatabaseConnection) {
    existing_accounts_become_owners(db).await;

    assert_eq!(Migrator::get_pending_migrations(db).await.unwrap().len(), MIGRATIONS);

    Migrator::up(db, None).await.expect("first up");
    assert_tables(db, true).await;
    assert!(Migrator::get_pending_migrations(db).await.unwrap().is_empty());

    // Idempotent: nothing pending, nothing re-applied.
    Migrator::up(db, None).await.expect("second up");
    assert_eq!(Migrator::get_applied_migrations(db).await.unwrap().len(), MIGRATIONS);

    // Round trip.
    Migrator::down(db, None).await.expect("down");
    assert_tables(db, false).await;
    assert_eq!(Migrator::get_pending_migrations(db).await.unwrap().len(), MIGRATIONS);

    Migrator::up(db, None).await.expect("up after down");
    assert_tables(db, true).await;
    assert!(Migrator::get_pending_migrations(db).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_migrate_up_down_up() {
    let (_dir, db) = common::fresh_sqlite().await;
    migrate_roundtrip(&db).await;
    db.close().await.unwrap();
}

/// `information_schema` type of `table.column` on PostgreSQL.
async fn pg_column_type(db: &DatabaseConnection, table: &str, column: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT data_type FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
            [table.into(), column.into()],
        ))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no column {table}.{column}"));
    row.try_get("", "data_type").unwrap()
}

#[tokio::test]
async fn postgres_migrate_up_down_up() {
    common::with_fresh_pg_db("PostgreSQL migration test", |url| async move {
        let db = Database::connect(&url).await.expect("connect to fresh db");
        assert_eq!(db.get_database_backend(), DbBackend::Postgres);
        migrate_roundtrip(&db).await;

        for (table, column, expected) in [
            ("users", "id", "uuid"),
            ("users", "created_at", "timestamp with time zone"),
            ("users", "disabled_at", "timestamp with time zone"),
            ("audit_events", "seq", "bigint"),
            ("audit_events", "cost_micros", "bigint"),
            ("wallets", "daily_limit_micros", "bigint"),
            ("approvals", "trust_at_request", "integer"),
            ("secrets", "ciphertext", "bytea"),
            ("policy_versions", "source", "text"),
            ("policies", "builtin", "boolean"),
        ] {
            assert_eq!(pg_column_type(&db, table, column).await, expected, "{table}.{column}");
        }
        db.close().await.unwrap();
    })
    .await;
}
