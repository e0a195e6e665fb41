//! What one `proxy.outcome` audit record adds to the usage rollups: pure, no I/O.
//!
//! A record counts when its call was performed (`allow`) or charged anyway (a
//! metered answer that broke off is billed its ceiling). A metered call's record
//! carries a `metering` object (`metering::bill`): its connection, model, tokens,
//! ceiling and how the charge was obtained. Anything else is an unmetered call:
//! empty connection and model, held what it was charged.

use std::collections::BTreeMap;

use app::model::UsageTotals;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// A rollup row's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub sponsor_id: Uuid,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub agent_id: Uuid,
    pub connection: String,
    pub model: String,
}

/// The fields of an outcome record the rollups read.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub at: DateTime<Utc>,
    pub sponsor_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub decision: Option<&'a str>,
    pub cost_micros: i64,
    pub detail: Option<&'a str>,
}

/// The UTC day of `at`.
pub fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// The row `o` adds to, and what it adds; `None` when it adds nothing (a call
/// denied or failed before anything was charged, a record without an agent).
pub fn fold(o: &Outcome<'_>) -> Option<(Key, UsageTotals)> {
    let (sponsor_id, agent_id) = (o.sponsor_id?, o.agent_id?);
    let metering = o
        .detail
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|mut d| d.get_mut("metering").map(Value::take))
        .filter(Value::is_object);
    if metering.is_none() && o.decision != Some("allow") && o.cost_micros == 0 {
        return None;
    }
    let int = |m: &Value, k: &str| m.get(k).and_then(Value::as_i64).unwrap_or(0).max(0);
    let text = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (connection, model, totals) = match &metering {
        Some(m) => (
            text(m, "connection"),
            text(m, "model"),
            UsageTotals {
                requests: 1,
                at_ceiling: i64::from(m.get("source").and_then(Value::as_str) == Some("ceiling")),
                tokens_in: int(m, "tokens_in"),
                tokens_cached: int(m, "tokens_cached"),
                tokens_cache_write: int(m, "tokens_cache_write"),
                tokens_out: int(m, "tokens_out"),
                held_micros: int(m, "ceiling_micros"),
                cost_micros: o.cost_micros.max(0),
            },
        ),
        None => (
            String::new(),
            String::new(),
            UsageTotals {
                requests: 1,
                held_micros: o.cost_micros.max(0),
                cost_micros: o.cost_micros.max(0),
                ..Default::default()
            },
        ),
    };
    Some((Key { sponsor_id, day: day(o.at), agent_id, connection, model }, totals))
}

/// Records folded into one total per key.
pub fn fold_all<'a>(records: impl IntoIterator<Item = Outcome<'a>>) -> BTreeMap<Key, UsageTotals> {
    let mut rows: BTreeMap<Key, UsageTotals> = BTreeMap::new();
    for o in records {
        if let Some((key, totals)) = fold(&o) {
            rows.entry(key).or_default().add(&totals);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        "2026-12-07T23:59:59Z".parse().unwrap()
    }

    fn outcome<'a>(decision: &'a str, cost: i64, detail: &'a str) -> Outcome<'a> {
        Outcome {
            at: at(),
            sponsor_id: Some(Uuid::from_u128(1)),
            agent_id: Some(Uuid::from_u128(2)),
            decision: Some(decision),
            cost_micros: cost,
            detail: Some(detail),
        }
    }

    fn metering(source: &str) -> String {
        json!({"policy": {}, "metering": {"connection": "llm", "model": "gpt-4o-mini", "tokens_in": 120,
               "tokens_cached": 30, "tokens_cache_write": 0, "tokens_out": 45, "ceiling_micros": 900,
               "charged_micros": 49, "source": source}})
        .to_string()
    }

    #[test]
    fn a_metered_outcome_adds_its_tokens_ceiling_and_charge() {
        let detail = metering("usage");
        let (key, t) = fold(&outcome("allow", 49, &detail)).unwrap();
        assert_eq!(
            (key.connection.as_str(), key.model.as_str(), key.day.as_str()),
            ("llm", "gpt-4o-mini", "2026-12-07")
        );
        assert_eq!(
            t,
            UsageTotals {
                requests: 1,
                at_ceiling: 0,
                tokens_in: 120,
                tokens_cached: 30,
                tokens_cache_write: 0,
                tokens_out: 45,
                held_micros: 900,
                cost_micros: 49
            }
        );
        let detail = metering("ceiling");
        assert_eq!(
            fold(&outcome("error", 900, &detail)).unwrap().1.at_ceiling,
            1,
            "broke off: billed anyway"
        );
    }

    #[test]
    fn unmetered_calls_count_under_an_empty_model_and_refusals_not_at_all() {
        let (key, t) = fold(&outcome("allow", 250_000, "{\"reasons\":[]}")).unwrap();
        assert_eq!((key.connection.as_str(), key.model.as_str()), ("", ""));
        assert_eq!((t.requests, t.held_micros, t.cost_micros, t.tokens()), (1, 250_000, 250_000, 0));
        assert!(fold(&outcome("deny", 0, "{}")).is_none());
        assert!(fold(&outcome("error", 0, "not json")).is_none());
        let mut nobody = outcome("allow", 5, "{}");
        nobody.agent_id = None;
        assert!(fold(&nobody).is_none());
    }

    #[test]
    fn records_of_one_key_are_summed() {
        let detail = metering("usage");
        let rows = fold_all([
            outcome("allow", 49, &detail),
            outcome("allow", 51, &detail),
            outcome("allow", 7, "{}"),
        ]);
        assert_eq!(rows.len(), 2);
        let llm = rows.iter().find(|(k, _)| k.model == "gpt-4o-mini").unwrap().1;
        assert_eq!((llm.requests, llm.cost_micros, llm.tokens_out, llm.held_micros), (2, 100, 90, 1800));
    }
}
