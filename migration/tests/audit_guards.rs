//! The audit guards: on PostgreSQL, UPDATE, DELETE and TRUNCATE on the audit
//! tables fail while INSERT works; after `down` they work again. SQLite: no-op.

mod common;

use migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use migration::{Migrator, MigratorTrait};

const INSERT_EVENT: &str = "INSERT INTO audit_events (seq, id, at, kind, cost_micros, \
     duration_us, prev_hash, hash) VALUES (1, '0190a000-0000-7000-8000-000000000001', \
     '2026-01-01T00:00:00Z', 'test', 0, 0, 'p', 'h')";
const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints (seq, head_hash, at, signature, \
     public_key) VALUES (1, 'h', '2026-01-01T00:00:00Z', 's', 'k')";

/// Every statement that would rewrite history.
const REWRITES: [&str; 6] = [
    "UPDATE audit_events SET kind = 'forged'",
    "DELETE FROM audit_events WHERE seq = 1",
    "TRUNCATE audit_events",
    "UPDATE audit_checkpoints SET head_hash = 'forged'",
    "DELETE FROM audit_checkpoints",
    "TRUNCATE audit_checkpoints",
];

async fn seed(db: &DatabaseConnection) {
    db.execute_unprepared(INSERT_EVENT).await.expect("insert event");
    db.execute_unprepared(INSERT_CHECKPOINT).await.expect("insert checkpoint");
}

#[tokio::test]
async fn postgres_refuses_rewrites_of_the_audit_tables() {
    common::with_fresh_pg_db("PostgreSQL audit guards", |url| async move {
        let db = Database::connect(&url).await.expect("connect");
        Migrator::up(&db, None).await.expect("up");
        seed(&db).await;
        for sql in REWRITES {
            let err = db.execute_unprepared(sql).await.err().unwrap_or_else(|| panic!("{sql} was allowed"));
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
        // An UPDATE matching no row is refused too (statement-level triggers).
        assert!(db.execute_unprepared("UPDATE audit_events SET kind = 'x' WHERE seq = 999").await.is_err());
        let count = db
            .query_one_raw(migration::sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT count(*) AS n FROM audit_events",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        assert_eq!(count, 1, "the row survived");

        // Rolling the guards back (and every migration after them) lifts them.
        let after_initial = (Migrator::migrations().len() - 1) as u32;
        Migrator::down(&db, Some(after_initial)).await.expect("down to the initial schema");
        for sql in REWRITES {
            db.execute_unprepared(sql).await.unwrap_or_else(|e| panic!("{sql} after down: {e}"));
        }
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sqlite_guards_are_a_no_op() {
    let (_dir, db) = common::fresh_sqlite().await;
    Migrator::up(&db, None).await.expect("up");
    seed(&db).await;
    for sql in REWRITES {
        let sql = sql.replace("TRUNCATE", "DELETE FROM");
        db.execute_unprepared(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    Migrator::down(&db, None).await.expect("down");
    db.close().await.unwrap();
}
