//! Which tools an MCP connection's server offers: listed through the pipeline
//! (`input.mcp.method == "tools/list"`: governed, secret injected, audited like any
//! call) and kept for [`TTL`] per connection (a changed connection is listed again),
//! with the protocol revision the server answered in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::error::AppError;
use chrono::{DateTime, Utc};
use entity::{connections, secrets};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::Value;
use uuid::Uuid;

use super::{ToolOutcome, request_for, tool_outcome};
use crate::agents::AgentPrincipal;
use crate::call::mcp::{McpCall, Reply, Revision, read_reply};
use crate::call::outcome::{Answer, Outcome};
use crate::connections::KIND_MCP;
use crate::db::internal;
use crate::proxy::Pipeline;

/// How long a server's tool list is used before it is listed again.
pub const TTL: Duration = Duration::from_secs(30);
/// At most this many tools are taken from one server.
const MAX_TOOLS: usize = 512;

type Listed = (Instant, DateTime<Utc>, Listing);

/// A server's tools, and the revision it was listed in (its calls use the same).
#[derive(Clone, Debug)]
pub struct Listing {
    pub tools: Arc<Vec<Value>>,
    pub revision: Revision,
}

#[derive(Clone)]
pub struct Catalog {
    db: DatabaseConnection,
    listed: Arc<Mutex<HashMap<Uuid, Listed>>>,
}

/// Whether the connection's allow-list lets agents see and call `tool`.
pub fn allowed(conn: &connections::Model, tool: &str) -> bool {
    match conn.mcp_tools.as_deref().map(serde_json::from_str::<Vec<String>>) {
        None => true,
        Some(Ok(list)) => list.iter().any(|t| t == tool),
        // An allow-list that cannot be read allows nothing.
        Some(Err(_)) => false,
    }
}

impl Catalog {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, listed: Arc::default() }
    }

    /// The sponsor's MCP connections (with their secrets' names), by name.
    pub async fn connections(
        &self,
        sponsor_id: Uuid,
    ) -> Result<Vec<(connections::Model, Option<String>)>, AppError> {
        let rows = connections::Entity::find()
            .filter(connections::Column::SponsorId.eq(sponsor_id))
            .filter(connections::Column::Kind.eq(KIND_MCP))
            .find_also_related(secrets::Entity)
            .order_by_asc(connections::Column::Name)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows.into_iter().map(|(c, s)| (c, s.map(|s| s.name))).collect())
    }

    /// The server's tools (as it lists them) and the revision it speaks, listed under
    /// `agent` when not known. The stateless revision is tried first; a server that
    /// answers it with an error (as a 2025-11-25 server does: no session) is listed
    /// again in the session revision, the way the SDKs' clients negotiate.
    pub async fn tools(
        &self,
        pipeline: &Pipeline,
        agent: &AgentPrincipal,
        conn: &(connections::Model, Option<String>),
    ) -> Result<Listing, String> {
        let (row, _) = conn;
        {
            let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, version, listing)) = listed.get(&row.id)
                && at.elapsed() < TTL
                && *version == row.updated_at
            {
                return Ok(listing.clone());
            }
        }
        let listing = match list(pipeline, agent, conn, Revision::Stateless).await {
            Err(Refusal::Answered(why)) => match list(pipeline, agent, conn, Revision::Sessions).await {
                Ok(listing) => listing,
                Err(Refusal::Answered(legacy)) => {
                    return Err(format!("{why}; in the session revision: {legacy}"));
                }
                Err(Refusal::Refused(why)) => return Err(why),
            },
            Err(Refusal::Refused(why)) => return Err(why),
            Ok(listing) => listing,
        };
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        listed.retain(|_, (at, _, _)| at.elapsed() < TTL);
        listed.insert(row.id, (Instant::now(), row.updated_at, listing.clone()));
        Ok(listing)
    }
}

/// Why a server's tools were not listed.
enum Refusal {
    /// The server answered, but not with a tool list (another revision may do).
    Answered(String),
    /// AEGIS did not perform the listing (policy, egress, breaker, …) or could not
    /// reach the server: another revision would not change that.
    Refused(String),
}

/// Lists the server's tools in `revision`, through the pipeline.
async fn list(
    pipeline: &Pipeline,
    agent: &AgentPrincipal,
    (row, secret): &(connections::Model, Option<String>),
    revision: Revision,
) -> Result<Listing, Refusal> {
    let mut call = McpCall::list_tools(&row.name);
    call.revision = revision;
    let request = request_for(row, secret.clone(), call);
    let result = pipeline
        .run(crate::proxy::new_request_id(), agent, request)
        .await
        .map_err(|e| Refusal::Refused(e.message))?;
    let reply = match &result.outcome {
        Outcome::Performed { upstream: Answer::Whole(r), .. } => {
            let content_type = r.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            read_reply(r.status, content_type, &r.body)
        }
        _ => {
            return Err(Refusal::Refused(match tool_outcome(result) {
                ToolOutcome::Refused { text, .. } | ToolOutcome::InvalidParams(text) => text,
                ToolOutcome::Result(_) => "not listed".into(),
            }));
        }
    };
    let tools: Vec<Value> = match reply {
        Reply::Result(v) => match v.get("tools").and_then(Value::as_array) {
            Some(tools) => tools
                .iter()
                .filter(|t| t.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()))
                .take(MAX_TOOLS)
                .cloned()
                .collect(),
            None => return Err(Refusal::Answered("the MCP server's tools/list result has no tools".into())),
        },
        Reply::Error { code, message } => {
            return Err(Refusal::Answered(format!("the MCP server answered error {code}: {message}")));
        }
        Reply::Malformed(why) => return Err(Refusal::Answered(why)),
    };
    Ok(Listing { tools: Arc::new(tools), revision })
}
