//! Reading the log for a sponsor: filters, keyset pagination (newest first) and the
//! streamed CSV export. A sponsor only ever sees records whose `sponsor_id` is theirs.

use app::error::AppError;
use app::model::Page;
pub use app::model::{AuditQuery, AuditRecord};
use chrono::{DateTime, SecondsFormat, Utc};
use entity::audit_events;
use futures::Stream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};
use uuid::Uuid;

use super::AuditLog;
use crate::db::internal;

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 200;

/// A validated filter, always scoped to one sponsor.
#[derive(Debug, Clone)]
pub struct AuditFilter {
    pub sponsor_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub kind: Option<String>,
    pub decision: Option<String>,
    pub request_id: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    /// Only records with a smaller seq (the cursor).
    pub before_seq: Option<i64>,
}

/// A free-text filter: blank counts as absent.
fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A parameter with a documented type or format (uuid, date-time, integer): when it
/// is sent at all it must be exactly a valid value; blank or padded is `invalid_{name}`,
/// as the OpenAPI schema says.
fn typed<'a>(name: &str, v: &'a Option<String>, expected: &str) -> Result<Option<&'a str>, AppError> {
    match v.as_deref() {
        None => Ok(None),
        Some(s) if s.is_empty() || s.trim() != s => {
            Err(AppError::bad_request(&format!("invalid_{name}"), format!("{name} must be {expected}")))
        }
        Some(s) => Ok(Some(s)),
    }
}

const RFC3339: &str = "an RFC 3339 time, e.g. 2026-01-31T12:00:00Z";

fn time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, AppError> {
    typed(name, v, RFC3339)?
        .map(|s| {
            DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                AppError::bad_request(&format!("invalid_{name}"), format!("{name} must be {RFC3339}"))
            })
        })
        .transpose()
}

fn text(name: &str, v: &Option<String>) -> Result<Option<String>, AppError> {
    present(v)
        .map(|s| {
            if s.chars().count() > 100 || s.chars().any(char::is_control) {
                Err(AppError::bad_request(
                    &format!("invalid_{name}"),
                    format!("{name} must be at most 100 printable characters"),
                ))
            } else {
                Ok(s.to_owned())
            }
        })
        .transpose()
}

/// The filter for `sponsor_id` and the page size; any bad value is a 400.
pub fn parse_query(q: &AuditQuery, sponsor_id: Uuid) -> Result<(AuditFilter, u64), AppError> {
    let agent_id = typed("agent", &q.agent, "an agent id (a UUID)")?
        .map(|s| {
            s.parse::<Uuid>()
                .map_err(|_| AppError::bad_request("invalid_agent", "agent must be an agent id (a UUID)"))
        })
        .transpose()?;
    let from = time("from", &q.from)?;
    let to = time("to", &q.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(AppError::bad_request("invalid_range", "from must not be later than to"));
    }
    let limit_text = format!("a whole number from 1 to {MAX_PAGE}");
    let limit = match typed("limit", &q.limit, &limit_text)? {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) && s.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(AppError::bad_request("invalid_limit", format!("limit must be {limit_text}")));
            }
        },
    };
    let before_seq = typed("cursor", &q.cursor, "a cursor this API returned")?
        .map(|s| match s.parse::<i64>() {
            Ok(n) if n > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(AppError::bad_request("invalid_cursor", "cursor is not one this API returned")),
        })
        .transpose()?;
    Ok((
        AuditFilter {
            sponsor_id,
            agent_id,
            kind: text("kind", &q.kind)?,
            decision: text("decision", &q.decision)?,
            request_id: text("request_id", &q.request_id)?,
            from,
            to,
            before_seq,
        },
        limit,
    ))
}

impl AuditFilter {
    fn select(&self) -> Select<audit_events::Entity> {
        use audit_events::Column as C;
        let mut q = audit_events::Entity::find().filter(C::SponsorId.eq(self.sponsor_id));
        if let Some(agent) = self.agent_id {
            q = q.filter(C::AgentId.eq(agent));
        }
        if let Some(kind) = &self.kind {
            q = q.filter(C::Kind.eq(kind.as_str()));
        }
        if let Some(decision) = &self.decision {
            q = q.filter(C::Decision.eq(decision.as_str()));
        }
        if let Some(request_id) = &self.request_id {
            q = q.filter(C::RequestId.eq(request_id.as_str()));
        }
        if let Some(from) = self.from {
            q = q.filter(C::At.gte(from));
        }
        if let Some(to) = self.to {
            q = q.filter(C::At.lt(to));
        }
        if let Some(before) = self.before_seq {
            q = q.filter(C::Seq.lt(before));
        }
        q.order_by_desc(C::Seq)
    }
}

/// The API's view of a stored record (every field).
pub fn to_record(m: audit_events::Model) -> AuditRecord {
    {
        AuditRecord {
            tool: mcp_tool(m.detail.as_deref()),
            seq: m.seq,
            id: m.id,
            at: m.at,
            sponsor_id: m.sponsor_id,
            agent_id: m.agent_id,
            request_id: m.request_id,
            kind: m.kind,
            stage: m.stage,
            decision: m.decision,
            method: m.method,
            host: m.host,
            path: m.path,
            status: m.status,
            cost_micros: m.cost_micros,
            duration_us: m.duration_us,
            request_hash: m.request_hash,
            policy_hash: m.policy_hash,
            policy_input: m.policy_input,
            detail: m.detail,
            prev_hash: m.prev_hash,
            hash: m.hash,
        }
    }
}

/// An MCP tool call's tool, `<server>__<tool>`, from a record's `detail.mcp`.
pub fn mcp_tool(detail: Option<&str>) -> Option<String> {
    let detail: serde_json::Value = serde_json::from_str(detail?).ok()?;
    let mcp = detail.get("mcp")?;
    let server = mcp.get("server")?.as_str()?;
    let tool = mcp.get("tool")?.as_str()?;
    Some(crate::call::mcp::McpCall::exposed_name(server, tool))
}

/// The CSV header, in column order.
pub const CSV_COLUMNS: [&str; 22] = [
    "seq",
    "id",
    "at",
    "sponsor_id",
    "agent_id",
    "request_id",
    "kind",
    "stage",
    "decision",
    "method",
    "host",
    "path",
    "status",
    "cost_micros",
    "duration_us",
    "request_hash",
    "policy_hash",
    "policy_input",
    "detail",
    "prev_hash",
    "hash",
    "tool",
];

fn csv_row(m: &audit_events::Model) -> [String; 22] {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let u = |v: Option<Uuid>| v.map(|u| u.to_string()).unwrap_or_default();
    [
        m.seq.to_string(),
        m.id.to_string(),
        m.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        u(m.sponsor_id),
        u(m.agent_id),
        s(&m.request_id),
        m.kind.clone(),
        s(&m.stage),
        s(&m.decision),
        s(&m.method),
        s(&m.host),
        s(&m.path),
        m.status.map(|v| v.to_string()).unwrap_or_default(),
        m.cost_micros.to_string(),
        m.duration_us.to_string(),
        s(&m.request_hash),
        s(&m.policy_hash),
        s(&m.policy_input),
        s(&m.detail),
        m.prev_hash.clone(),
        m.hash.clone(),
        mcp_tool(m.detail.as_deref()).unwrap_or_default(),
    ]
}

/// A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, TAB or CR first)
/// gets a leading `'` so it is shown as text (OWASP "CSV injection"). Plain integers
/// (`-5`) are data, not formulas, and stay as they are.
fn defuse(cell: String) -> String {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && cell.parse::<i64>().is_err() { format!("'{cell}") } else { cell }
}

fn csv_bytes(header: bool, rows: &[audit_events::Model]) -> Result<Vec<u8>, AppError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| {
        tracing::error!(error = %e, "csv encoding failed");
        AppError::internal()
    };
    if header {
        w.write_record(CSV_COLUMNS).map_err(fail)?;
    }
    for r in rows {
        w.write_record(csv_row(r).map(defuse)).map_err(fail)?;
    }
    w.into_inner().map_err(|e| fail(e.into_error().into()))
}

impl AuditLog {
    async fn fetch(&self, filter: &AuditFilter, n: u64) -> Result<Vec<audit_events::Model>, AppError> {
        filter.select().limit(n).all(&self.state.db).await.map_err(internal)
    }

    /// One page, newest first; `next_cursor` continues below its last record.
    pub async fn list(&self, filter: &AuditFilter, limit: u64) -> Result<Page<AuditRecord>, AppError> {
        let mut rows = self.fetch(filter, limit + 1).await?;
        let next_cursor = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        Ok(Page { items: rows.into_iter().map(to_record).collect(), next_cursor })
    }

    /// The CSV export as a stream of chunks: the header and the first chunk are
    /// read before this returns (so a failing database is an error response,
    /// not a truncated file), the rest is read chunk by chunk as the client reads.
    pub async fn export_csv(
        &self,
        mut filter: AuditFilter,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, AppError>> + Send + 'static, AppError> {
        let chunk = self.chunk;
        let rows = self.fetch(&filter, chunk).await?;
        let done = (rows.len() as u64) < chunk;
        filter.before_seq = rows.last().map(|r| r.seq).or(filter.before_seq);
        let first = csv_bytes(true, &rows)?;
        let log = self.clone();
        let rest =
            futures::stream::try_unfold((log, filter, done), move |(log, mut filter, done)| async move {
                if done {
                    return Ok(None);
                }
                let rows = log.fetch(&filter, chunk).await.inspect_err(|_| {
                    tracing::error!("audit CSV export aborted: database error");
                })?;
                if rows.is_empty() {
                    return Ok(None);
                }
                let done = (rows.len() as u64) < chunk;
                filter.before_seq = rows.last().map(|r| r.seq);
                Ok(Some((csv_bytes(false, &rows)?, (log, filter, done))))
            });
        Ok(futures::stream::StreamExt::chain(futures::stream::once(async move { Ok(first) }), rest))
    }
}

/// The seq of the `kind` record (`proxy.intent`, `proxy.outcome`, …) of
/// `request_id`, if the log has one: how far an interrupted call got.
pub async fn seq_of(
    db: &sea_orm::DatabaseConnection,
    request_id: &str,
    kind: &str,
) -> Result<Option<i64>, AppError> {
    audit_events::Entity::find()
        .select_only()
        .column(audit_events::Column::Seq)
        .filter(audit_events::Column::RequestId.eq(request_id))
        .filter(audit_events::Column::Kind.eq(kind))
        .into_tuple::<i64>()
        .one(db)
        .await
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<(AuditFilter, u64), AppError> {
        let mut query = AuditQuery::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "agent" => query.agent = v,
                "kind" => query.kind = v,
                "decision" => query.decision = v,
                "from" => query.from = v,
                "to" => query.to = v,
                "limit" => query.limit = v,
                "cursor" => query.cursor = v,
                _ => unreachable!(),
            }
        }
        parse_query(&query, Uuid::nil())
    }

    #[test]
    fn bad_values_are_400_with_their_own_code() {
        for (pairs, code) in [
            (vec![("agent", "bob")], "invalid_agent"),
            (vec![("from", "yesterday")], "invalid_from"),
            (vec![("to", "2026-01-01")], "invalid_to"),
            (vec![("from", "2026-02-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")], "invalid_range"),
            (vec![("limit", "0")], "invalid_limit"),
            (vec![("limit", "-1")], "invalid_limit"),
            (vec![("limit", "ten")], "invalid_limit"),
            (vec![("cursor", "abc")], "invalid_cursor"),
            (vec![("cursor", "0")], "invalid_cursor"),
            (vec![("kind", "a\nb")], "invalid_kind"),
            (vec![("limit", "201")], "invalid_limit"),
            (vec![("limit", "2147483648")], "invalid_limit"),
            (vec![("limit", "+5")], "invalid_limit"),
            (vec![("limit", "")], "invalid_limit"),
            (vec![("to", "")], "invalid_to"),
            (vec![("from", " ")], "invalid_from"),
            (vec![("to", " 2026-01-01T00:00:00Z")], "invalid_to"),
            (vec![("agent", "")], "invalid_agent"),
            (vec![("cursor", "")], "invalid_cursor"),
        ] {
            let err = q(&pairs).err().unwrap_or_else(|| panic!("{pairs:?} accepted"));
            assert_eq!((err.status, err.code.as_str()), (400, code), "{pairs:?}");
        }
    }

    #[test]
    fn defaults_limits_and_blank_values() {
        let (f, limit) = q(&[("kind", " "), ("decision", "")]).unwrap();
        assert_eq!(limit, DEFAULT_PAGE);
        assert!(f.kind.is_none() && f.decision.is_none() && f.before_seq.is_none());
        assert_eq!(q(&[("limit", "200")]).unwrap().1, MAX_PAGE);
        let (f, _) = q(&[("from", "2026-01-01T01:00:00+01:00"), ("cursor", "17")]).unwrap();
        assert_eq!(f.from.unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(f.before_seq, Some(17));
    }

    #[test]
    fn csv_cells_that_would_run_as_formulas_are_defused() {
        for (cell, shown) in [
            ("=HYPERLINK(\"http://evil.example\")", "'=HYPERLINK(\"http://evil.example\")"),
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("-5", "-5"),
            ("/v1/x=1", "/v1/x=1"),
            ("", ""),
        ] {
            assert_eq!(defuse(cell.to_owned()), shown, "{cell:?}");
        }
    }

    #[test]
    fn csv_quotes_awkward_values() {
        let m = audit_events::Model {
            seq: 1,
            id: Uuid::nil(),
            at: Utc::now(),
            sponsor_id: None,
            agent_id: None,
            request_id: None,
            kind: "agent.created".into(),
            stage: None,
            decision: None,
            method: None,
            host: None,
            path: Some("/a,\"b\"\nc".into()),
            status: None,
            cost_micros: 0,
            duration_us: 0,
            request_hash: None,
            policy_hash: None,
            policy_input: None,
            detail: Some(r#"{"name":"x, y"}"#.into()),
            prev_hash: "0".repeat(64),
            hash: "1".repeat(64),
        };
        let bytes = csv_bytes(true, &[m]).unwrap();
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(r.headers().unwrap().len(), CSV_COLUMNS.len());
        let row = r.records().next().unwrap().unwrap();
        assert_eq!(&row[11], "/a,\"b\"\nc");
        assert_eq!(&row[18], r#"{"name":"x, y"}"#);
    }
}
