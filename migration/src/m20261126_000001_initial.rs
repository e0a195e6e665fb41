//! Initial schema: every AEGIS table, its foreign keys and its indexes.
//!
//! Conventions:
//! - ids are UUIDs (`uuid` on PostgreSQL, `uuid_text` affinity on SQLite);
//! - timestamps are `timestamp with time zone` on PostgreSQL (SeaORM stores
//!   them as RFC 3339 text on SQLite);
//! - money and counters that can grow large are `bigint` (micro-units);
//! - JSON payloads are kept as `text` so both backends treat them alike.
//!
//! Tables are created parents first and dropped children first.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Partial unique index: a sponsor cannot have two *live* agents with the
/// same name, but a soft-deleted agent's name may be reused. Valid SQL on
/// both SQLite (3.8+) and PostgreSQL; sea-query has no builder for it.
const CREATE_UX_AGENTS_SPONSOR_NAME_LIVE: &str = "CREATE UNIQUE INDEX ux_agents_sponsor_name_live \
     ON agents (sponsor_id, name) WHERE deleted_at IS NULL";

/// Every table this migration creates, in creation (dependency) order.
const TABLES: &[&str] = &[
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
];

/// `fk_<table>_<column>`: `table.column` references `parent.id`.
fn fk(
    table: &'static str,
    column: &'static str,
    parent: &'static str,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{table}_{column}"))
        .from(table, column)
        .to(parent, "id")
        .on_delete(on_delete)
        .on_update(ForeignKeyAction::NoAction)
        .take()
}

/// `ix_<table>_<columns>` (or `ux_` when unique).
fn index(table: &'static str, columns: &[&'static str], unique: bool) -> IndexCreateStatement {
    let prefix = if unique { "ux" } else { "ix" };
    let mut stmt = Index::create();
    stmt.name(format!("{prefix}_{table}_{}", columns.join("_"))).table(table);
    for column in columns {
        stmt.col(*column);
    }
    if unique {
        stmt.unique();
    }
    stmt.take()
}

/// Timestamp that keeps its time zone on PostgreSQL.
fn ts(column: &'static str) -> ColumnDef {
    timestamp_with_time_zone(column)
}

fn ts_null(column: &'static str) -> ColumnDef {
    timestamp_with_time_zone_null(column)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// Run inside one transaction on every backend (SQLite has transactional
    /// DDL too), so a failure never leaves a half-built schema behind.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ForeignKeyAction::{Cascade, SetNull};

        // users
        manager
            .create_table(
                Table::create()
                    .table("users")
                    .col(pk_uuid("id"))
                    .col(string_uniq("email"))
                    .col(string("name"))
                    .col(string("password_hash"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(ts_null("disabled_at"))
                    .take(),
            )
            .await?;

        // refresh_families
        manager
            .create_table(
                Table::create()
                    .table("refresh_families")
                    .col(pk_uuid("id"))
                    .col(uuid("user_id"))
                    .col(ts("created_at"))
                    .col(ts("last_used_at"))
                    .col(ts("expires_at"))
                    .col(ts_null("revoked_at"))
                    .col(string_null("revoked_reason"))
                    .col(string_null("user_agent"))
                    .col(string_null("ip"))
                    .foreign_key(&mut fk("refresh_families", "user_id", "users", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("refresh_families", &["user_id"], false)).await?;

        // refresh_tokens
        manager
            .create_table(
                Table::create()
                    .table("refresh_tokens")
                    .col(pk_uuid("id"))
                    .col(uuid("family_id"))
                    .col(string_uniq("token_hash"))
                    .col(ts("created_at"))
                    .col(ts("expires_at"))
                    .col(ts_null("rotated_at"))
                    .foreign_key(&mut fk("refresh_tokens", "family_id", "refresh_families", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("refresh_tokens", &["family_id"], false)).await?;

        // policies (sponsor_id NULL = built-in)
        manager
            .create_table(
                Table::create()
                    .table("policies")
                    .col(pk_uuid("id"))
                    .col(uuid_null("sponsor_id"))
                    .col(string("name"))
                    .col(string_null("description"))
                    .col(boolean("builtin"))
                    .col(integer("current_version"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .foreign_key(&mut fk("policies", "sponsor_id", "users", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("policies", &["sponsor_id", "name"], false)).await?;

        // policy_versions
        manager
            .create_table(
                Table::create()
                    .table("policy_versions")
                    .col(pk_uuid("id"))
                    .col(uuid("policy_id"))
                    .col(integer("version"))
                    .col(text("source"))
                    .col(string("sha256"))
                    .col(ts("created_at"))
                    .col(uuid_null("created_by"))
                    .foreign_key(&mut fk("policy_versions", "policy_id", "policies", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("policy_versions", &["policy_id", "version"], true)).await?;
        manager.create_index(index("policy_versions", &["sha256"], false)).await?;

        // agents
        manager
            .create_table(
                Table::create()
                    .table("agents")
                    .col(pk_uuid("id"))
                    .col(uuid("sponsor_id"))
                    .col(string("name"))
                    .col(string_null("description"))
                    .col(string("status"))
                    .col(uuid_null("policy_id"))
                    .col(integer("trust_score"))
                    .col(text("tags").default("[]"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(ts_null("suspended_at"))
                    .col(string_null("suspended_reason"))
                    .col(ts_null("deleted_at"))
                    .col(ts_null("last_seen_at"))
                    .foreign_key(&mut fk("agents", "sponsor_id", "users", Cascade))
                    .foreign_key(&mut fk("agents", "policy_id", "policies", SetNull))
                    .take(),
            )
            .await?;
        manager.create_index(index("agents", &["sponsor_id", "created_at"], false)).await?;
        manager.get_connection().execute_unprepared(CREATE_UX_AGENTS_SPONSOR_NAME_LIVE).await?;

        // agent_keys
        manager
            .create_table(
                Table::create()
                    .table("agent_keys")
                    .col(pk_uuid("id"))
                    .col(uuid("agent_id"))
                    .col(string_uniq("key_id"))
                    .col(string("key_hash"))
                    .col(ts("created_at"))
                    .col(ts_null("revoked_at"))
                    .col(ts_null("last_used_at"))
                    .foreign_key(&mut fk("agent_keys", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("agent_keys", &["agent_id"], false)).await?;

        // secrets
        manager
            .create_table(
                Table::create()
                    .table("secrets")
                    .col(pk_uuid("id"))
                    .col(uuid("sponsor_id"))
                    .col(string("name"))
                    .col(blob("ciphertext"))
                    .col(blob("nonce"))
                    .col(text("allowed_hosts"))
                    .col(string_null("inject_header"))
                    .col(string_null("inject_format"))
                    .col(string_null("inject_query_param"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(ts_null("rotated_at"))
                    .foreign_key(&mut fk("secrets", "sponsor_id", "users", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("secrets", &["sponsor_id", "name"], true)).await?;

        // secret_grants (composite primary key)
        manager
            .create_table(
                Table::create()
                    .table("secret_grants")
                    .col(uuid("secret_id"))
                    .col(uuid("agent_id"))
                    .col(ts("created_at"))
                    .primary_key(Index::create().name("pk_secret_grants").col("secret_id").col("agent_id"))
                    .foreign_key(&mut fk("secret_grants", "secret_id", "secrets", Cascade))
                    .foreign_key(&mut fk("secret_grants", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("secret_grants", &["agent_id"], false)).await?;

        // connections
        manager
            .create_table(
                Table::create()
                    .table("connections")
                    .col(pk_uuid("id"))
                    .col(uuid("sponsor_id"))
                    .col(string("name"))
                    .col(string("base_url"))
                    .col(uuid_null("secret_id"))
                    .col(big_integer("cost_micros"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .foreign_key(&mut fk("connections", "sponsor_id", "users", Cascade))
                    .foreign_key(&mut fk("connections", "secret_id", "secrets", SetNull))
                    .take(),
            )
            .await?;
        manager.create_index(index("connections", &["sponsor_id", "name"], true)).await?;

        // wallets (one per agent; agent_id is the primary key)
        manager
            .create_table(
                Table::create()
                    .table("wallets")
                    .col(pk_uuid("agent_id"))
                    .col(big_integer("daily_limit_micros"))
                    .col(big_integer("monthly_limit_micros"))
                    .col(big_integer("daily_spent_micros"))
                    .col(big_integer("monthly_spent_micros"))
                    .col(big_integer("reserved_micros"))
                    .col(string("day_window"))
                    .col(string("month_window"))
                    .col(string("timezone"))
                    .col(integer_null("alert_threshold_pct"))
                    .col(string_null("alert_sent_day"))
                    .col(string_null("alert_sent_month"))
                    .col(ts("updated_at"))
                    .foreign_key(&mut fk("wallets", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;

        // ledger_entries
        manager
            .create_table(
                Table::create()
                    .table("ledger_entries")
                    .col(pk_uuid("id"))
                    .col(uuid("agent_id"))
                    .col(string_uniq("request_id"))
                    .col(string("status"))
                    .col(big_integer("reserved_micros"))
                    .col(big_integer_null("settled_micros"))
                    .col(string("day_window"))
                    .col(string("month_window"))
                    .col(ts("created_at"))
                    .col(ts("expires_at"))
                    .col(ts_null("resolved_at"))
                    .foreign_key(&mut fk("ledger_entries", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("ledger_entries", &["status", "expires_at"], false)).await?;
        manager.create_index(index("ledger_entries", &["agent_id", "created_at"], false)).await?;

        // approvals
        manager
            .create_table(
                Table::create()
                    .table("approvals")
                    .col(pk_uuid("id"))
                    .col(uuid("sponsor_id"))
                    .col(uuid("agent_id"))
                    .col(string("status"))
                    .col(string("request_hash"))
                    .col(text("request_json"))
                    .col(string("method"))
                    .col(string("url"))
                    .col(string_null("action_label"))
                    .col(string_null("secret_name"))
                    .col(big_integer("cost_micros"))
                    .col(text("policy_reasons"))
                    .col(integer("trust_at_request"))
                    .col(ts("created_at"))
                    .col(ts_null("expires_at"))
                    .col(ts_null("decided_at"))
                    .col(uuid_null("decided_by"))
                    .col(string_null("decision_reason"))
                    .col(text_null("outcome_json"))
                    .col(big_integer_null("outcome_audit_seq"))
                    .col(integer_null("grant_max_actions"))
                    .col(integer("grant_used_actions"))
                    .col(ts_null("grant_until"))
                    .col(big_integer_null("grant_max_micros"))
                    .col(big_integer("grant_spent_micros"))
                    .foreign_key(&mut fk("approvals", "sponsor_id", "users", Cascade))
                    .foreign_key(&mut fk("approvals", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("approvals", &["sponsor_id", "status", "created_at"], false)).await?;
        manager.create_index(index("approvals", &["agent_id", "status"], false)).await?;

        // audit_events: seq is assigned by the application; no foreign keys
        // on purpose (audit rows outlive users and agents).
        manager
            .create_table(
                Table::create()
                    .table("audit_events")
                    .col(big_integer("seq").primary_key())
                    .col(uuid_uniq("id"))
                    .col(ts("at"))
                    .col(uuid_null("sponsor_id"))
                    .col(uuid_null("agent_id"))
                    .col(string_null("request_id"))
                    .col(string("kind"))
                    .col(string_null("stage"))
                    .col(string_null("decision"))
                    .col(string_null("method"))
                    .col(string_null("host"))
                    .col(string_null("path"))
                    .col(integer_null("status"))
                    .col(big_integer("cost_micros"))
                    .col(big_integer("duration_us"))
                    .col(string_null("request_hash"))
                    .col(string_null("policy_hash"))
                    .col(text_null("policy_input"))
                    .col(text_null("detail"))
                    .col(string("prev_hash"))
                    .col(string("hash"))
                    .take(),
            )
            .await?;
        manager.create_index(index("audit_events", &["sponsor_id", "seq"], false)).await?;
        manager.create_index(index("audit_events", &["agent_id", "seq"], false)).await?;
        manager.create_index(index("audit_events", &["kind", "seq"], false)).await?;
        manager.create_index(index("audit_events", &["at"], false)).await?;

        // audit_checkpoints
        manager
            .create_table(
                Table::create()
                    .table("audit_checkpoints")
                    .col(big_integer("seq").primary_key())
                    .col(string("head_hash"))
                    .col(ts("at"))
                    .col(string("signature"))
                    .col(string("public_key"))
                    .take(),
            )
            .await?;

        // trust_events
        manager
            .create_table(
                Table::create()
                    .table("trust_events")
                    .col(pk_uuid("id"))
                    .col(uuid("agent_id"))
                    .col(ts("at"))
                    .col(integer("delta"))
                    .col(integer("score_after"))
                    .col(string("reason"))
                    .col(big_integer_null("audit_seq"))
                    .foreign_key(&mut fk("trust_events", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;
        manager.create_index(index("trust_events", &["agent_id", "at"], false)).await?;

        // idempotency_records (composite primary key)
        manager
            .create_table(
                Table::create()
                    .table("idempotency_records")
                    .col(uuid("agent_id"))
                    .col(string("idempotency_key"))
                    .col(string("request_id"))
                    .col(string("request_hash"))
                    .col(integer("response_status"))
                    .col(text("response_json"))
                    .col(ts("created_at"))
                    .primary_key(
                        Index::create().name("pk_idempotency_records").col("agent_id").col("idempotency_key"),
                    )
                    .foreign_key(&mut fk("idempotency_records", "agent_id", "agents", Cascade))
                    .take(),
            )
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Children first; dropping a table drops its indexes with it.
        for table in TABLES.iter().rev() {
            manager.drop_table(Table::drop().table(*table).take()).await?;
        }
        Ok(())
    }
}
