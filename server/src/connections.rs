//! Connections: named upstreams for gateway mode. An unmodified SDK pointed at
//! `/api/gw/{name}` reaches `base_url` through the full pipeline, with the
//! connection's secret swapped in for the agent's AEGIS key.

use std::sync::Arc;

use app::error::AppError;
use app::model::{ConnectionPatch, ConnectionView, NewConnection, Pricing, RateLimits};
use app::money::MAX_MICROS;
use entity::{connections, secrets};
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use crate::actor::Actor;
use crate::audit::{AuditEntry, AuditLog};
use crate::db::{internal, now, unique_or_internal};
use crate::metering::prices::resolve;
use crate::proxy::egress::EgressGuard;
use crate::secrets::{SecretService, hosts};
use crate::store::CallStore;

#[derive(Clone)]
pub struct ConnectionService {
    db: DatabaseConnection,
    /// The hot path's reads ([`crate::store`]).
    store: Arc<dyn CallStore>,
    secrets: SecretService,
    egress: EgressGuard,
    /// Every change is audited in its own transaction, naming the member.
    audit: AuditLog,
}

/// What a connection change records: which one, its kind, where it goes (the base
/// URL's origin only: a path can carry a capability) and the secret's name.
fn change(row: &connections::Model, secret: Option<&str>) -> serde_json::Value {
    let origin = url::Url::parse(&row.base_url).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    serde_json::json!({"connection": row.id, "name": row.name, "kind": row.kind, "origin": origin,
                       "secret": secret, "cost_micros": row.cost_micros})
}

fn view(row: connections::Model, secret: Option<String>) -> ConnectionView {
    let mcp = row.kind == KIND_MCP;
    ConnectionView {
        id: row.id,
        gateway_path: if mcp { "/mcp".into() } else { format!("/api/gw/{}", row.name) },
        tools: row.mcp_tools.as_deref().and_then(|t| serde_json::from_str(t).ok()),
        record_arguments: row.record_arguments,
        kind: row.kind,
        pricing: row.pricing.as_deref().and_then(|p| serde_json::from_str(p).ok()),
        rate_limits: row.rate_limits.as_deref().and_then(|l| serde_json::from_str(l).ok()),
        name: row.name,
        base_url: row.base_url,
        secret,
        cost_micros: row.cost_micros,
        created_at: row.created_at,
    }
}

/// An MCP server's connection (`kind: "mcp"`); every other is `http`.
pub use crate::call::mcp::KIND_MCP;
const KIND_HTTP: &str = "http";
/// At most this many tools in an MCP connection's allow-list.
const MAX_TOOLS: usize = 256;

/// What an MCP connection adds, checked: its kind, allow-list and audit setting.
struct Mcp {
    kind: String,
    tools: Option<String>,
    record_arguments: bool,
}

fn checked_mcp(
    kind: Option<&str>,
    tools: Option<Vec<String>>,
    record_arguments: Option<bool>,
) -> Result<Mcp, AppError> {
    let kind = match kind.map(str::trim) {
        None | Some("") | Some(KIND_HTTP) => KIND_HTTP,
        Some(KIND_MCP) => KIND_MCP,
        Some(other) => {
            return Err(AppError::new(
                422,
                "invalid_kind",
                format!("kind must be \"http\" or \"mcp\", not {other:?}"),
            ));
        }
    };
    if kind == KIND_HTTP && (tools.is_some() || record_arguments == Some(true)) {
        return Err(AppError::new(
            422,
            "invalid_kind",
            "tools and record_arguments are for kind \"mcp\" only",
        ));
    }
    let tools = match tools {
        None => None,
        Some(list) => {
            if list.len() > MAX_TOOLS {
                return Err(AppError::validation(format!("at most {MAX_TOOLS} tools")));
            }
            let mut names = Vec::with_capacity(list.len());
            for t in list {
                let t = t.trim().to_owned();
                if t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(AppError::validation(format!("invalid tool name {t:?}")));
                }
                if !names.contains(&t) {
                    names.push(t);
                }
            }
            Some(serde_json::to_string(&names).map_err(|_| AppError::internal())?)
        }
    };
    Ok(Mcp { kind: kind.to_owned(), tools, record_arguments: record_arguments.unwrap_or(false) })
}

/// A pricing checked and completed ([`crate::metering::prices::resolve`]), as saved.
fn saved_pricing(pricing: Option<Pricing>) -> Result<Option<String>, AppError> {
    let Some(pricing) = pricing else { return Ok(None) };
    let resolved = resolve(pricing).map_err(|m| AppError::new(422, "invalid_pricing", m))?;
    Ok(Some(serde_json::to_string(&resolved).map_err(|_| AppError::internal())?))
}

/// What a connection is, checked: its base URL (allowed for egress, without query
/// or fragment), price, and secret (which must be allowed to go to the base URL).
struct Checked {
    base_url: String,
    cost_micros: i64,
    secret: Option<secrets::Model>,
    pricing: Option<String>,
    rate_limits: Option<String>,
}

impl ConnectionService {
    pub fn new(
        db: DatabaseConnection,
        store: Arc<dyn CallStore>,
        secrets: SecretService,
        egress: EgressGuard,
        audit: AuditLog,
    ) -> Self {
        Self { db, store, secrets, egress, audit }
    }

    async fn check(
        &self,
        sponsor_id: Uuid,
        base_url: &str,
        cost: Option<i64>,
        secret: Option<&str>,
        pricing: Option<Pricing>,
        rate_limits: Option<RateLimits>,
    ) -> Result<Checked, AppError> {
        let base = base_url.trim().trim_end_matches('/').to_owned();
        let target = self
            .egress
            .check_url(&base)
            .map_err(|d| AppError::new(422, "invalid_base_url", format!("base_url: {}", d.reason)))?;
        if target.query.is_some() || target.url.fragment().is_some() {
            return Err(AppError::new(422, "invalid_base_url", "base_url must not have a query or fragment"));
        }
        let cost = cost.unwrap_or(0);
        if !(0..=MAX_MICROS).contains(&cost) {
            return Err(AppError::validation("cost_micros must be between 0 and 10^15"));
        }
        let pricing = saved_pricing(pricing)?;
        let rate_limits = crate::rate_limits::saved(rate_limits)?;
        let secret = match secret.map(str::trim).filter(|s| !s.is_empty()) {
            Some(name) => {
                let secret = self.secrets.find_by_name(sponsor_id, name).await?.ok_or_else(|| {
                    AppError::new(422, "unknown_secret", format!("no secret named {name:?}"))
                })?;
                let to = hosts::Destination { scheme: &target.scheme, host: &target.host, port: target.port };
                if !hosts::any_matches(&crate::secrets::allowed_patterns(&secret), &to) {
                    return Err(AppError::new(
                        422,
                        "secret_host_mismatch",
                        format!("secret {name:?} may not be sent to {to}"),
                    ));
                }
                Some(secret)
            }
            None => None,
        };
        Ok(Checked { base_url: base, cost_micros: cost, secret, pricing, rate_limits })
    }

    /// A whole connection as `POST` and `PUT` take it: its name and the rest checked.
    async fn check_new(
        &self,
        sponsor_id: Uuid,
        input: NewConnection,
    ) -> Result<(String, Checked, Mcp), AppError> {
        let name = crate::names::identifier(&input.name, "connection name")?;
        let mcp = checked_mcp(input.kind.as_deref(), input.tools, input.record_arguments)?;
        if mcp.kind == KIND_MCP && name.contains(crate::call::mcp::SEPARATOR) {
            // Agents call `<connection>__<tool>`: the connection's part must be unambiguous.
            return Err(AppError::validation("an MCP connection's name must not contain \"__\""));
        }
        if mcp.kind == KIND_MCP && input.pricing.is_some() {
            return Err(AppError::new(
                422,
                "invalid_pricing",
                "an MCP connection is priced per tool call (cost_micros)",
            ));
        }
        let secret = input.secret.as_deref();
        let c = self
            .check(sponsor_id, &input.base_url, input.cost_micros, secret, input.pricing, input.rate_limits)
            .await?;
        Ok((name, c, mcp))
    }

    /// Audited as `connection.created`.
    pub async fn create(&self, by: &Actor, input: NewConnection) -> Result<ConnectionView, AppError> {
        let sponsor_id = by.org;
        let (name, c, mcp) = self.check_new(sponsor_id, input).await?;
        let at = now();
        let mut txn = self.audit.begin().await?;
        let row = connections::ActiveModel {
            id: Set(Uuid::now_v7()),
            sponsor_id: Set(sponsor_id),
            name: Set(name),
            base_url: Set(c.base_url),
            secret_id: Set(c.secret.as_ref().map(|s| s.id)),
            cost_micros: Set(c.cost_micros),
            pricing: Set(c.pricing),
            rate_limits: Set(c.rate_limits),
            kind: Set(mcp.kind),
            mcp_tools: Set(mcp.tools),
            record_arguments: Set(mcp.record_arguments),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(txn.conn())
        .await
        .map_err(|e| {
            unique_or_internal(
                e,
                AppError::conflict("connection_name_taken", "a connection with this name exists"),
            )
        })?;
        let secret = c.secret.map(|s| s.name);
        txn.append(AuditEntry::by_member("connection.created", by, change(&row, secret.as_deref()))).await?;
        txn.commit().await?;
        Ok(view(row, secret))
    }

    /// `PUT`: the connection becomes `input` (renamed too, if the name is free).
    /// Audited as `connection.updated`.
    pub async fn replace(
        &self,
        by: &Actor,
        id: Uuid,
        input: NewConnection,
    ) -> Result<ConnectionView, AppError> {
        let row = self.own(by.org, id).await?;
        let (name, c, mcp) = self.check_new(by.org, input).await?;
        self.save(by, row, Some(name), c, mcp).await
    }

    /// `PATCH`: only the fields given change (`null` removes the secret or pricing).
    /// Audited as `connection.updated`.
    pub async fn patch(
        &self,
        by: &Actor,
        id: Uuid,
        patch: ConnectionPatch,
    ) -> Result<ConnectionView, AppError> {
        let sponsor_id = by.org;
        let row = self.own(sponsor_id, id).await?;
        let current_secret = match row.secret_id {
            Some(secret_id) => {
                secrets::Entity::find_by_id(secret_id).one(&self.db).await.map_err(internal)?.map(|s| s.name)
            }
            None => None,
        };
        let current_pricing: Option<Pricing> =
            row.pricing.as_deref().and_then(|p| serde_json::from_str(p).ok());
        let base_url = patch.base_url.unwrap_or_else(|| row.base_url.clone());
        let secret = patch.secret.unwrap_or(current_secret);
        let pricing = patch.pricing.unwrap_or(current_pricing);
        let current_limits: Option<RateLimits> =
            row.rate_limits.as_deref().and_then(|l| serde_json::from_str(l).ok());
        let rate_limits = patch.rate_limits.unwrap_or(current_limits);
        let cost = Some(patch.cost_micros.unwrap_or(row.cost_micros));
        let current_tools: Option<Vec<String>> =
            row.mcp_tools.as_deref().and_then(|t| serde_json::from_str(t).ok());
        let tools = patch.tools.unwrap_or(current_tools);
        let record_arguments = Some(patch.record_arguments.unwrap_or(row.record_arguments));
        let mcp = checked_mcp(Some(&row.kind), tools, record_arguments)?;
        if mcp.kind == KIND_MCP && pricing.is_some() {
            return Err(AppError::new(
                422,
                "invalid_pricing",
                "an MCP connection is priced per tool call (cost_micros)",
            ));
        }
        let c = self.check(sponsor_id, &base_url, cost, secret.as_deref(), pricing, rate_limits).await?;
        self.save(by, row, None, c, mcp).await
    }

    async fn own(&self, sponsor_id: Uuid, id: Uuid) -> Result<connections::Model, AppError> {
        connections::Entity::find_by_id(id)
            .filter(connections::Column::SponsorId.eq(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("connection"))
    }

    async fn save(
        &self,
        by: &Actor,
        row: connections::Model,
        name: Option<String>,
        c: Checked,
        mcp: Mcp,
    ) -> Result<ConnectionView, AppError> {
        let mut active: connections::ActiveModel = row.into();
        if let Some(name) = name {
            active.name = Set(name);
        }
        active.base_url = Set(c.base_url);
        active.secret_id = Set(c.secret.as_ref().map(|s| s.id));
        active.cost_micros = Set(c.cost_micros);
        active.pricing = Set(c.pricing);
        active.rate_limits = Set(c.rate_limits);
        active.kind = Set(mcp.kind);
        active.mcp_tools = Set(mcp.tools);
        active.record_arguments = Set(mcp.record_arguments);
        active.updated_at = Set(now());
        let mut txn = self.audit.begin().await?;
        let row = active.update(txn.conn()).await.map_err(|e| {
            unique_or_internal(
                e,
                AppError::conflict("connection_name_taken", "a connection with this name exists"),
            )
        })?;
        let secret = c.secret.map(|s| s.name);
        txn.append(AuditEntry::by_member("connection.updated", by, change(&row, secret.as_deref()))).await?;
        txn.commit().await?;
        Ok(view(row, secret))
    }

    pub async fn list(&self, sponsor_id: Uuid) -> Result<Vec<ConnectionView>, AppError> {
        let rows = connections::Entity::find()
            .filter(connections::Column::SponsorId.eq(sponsor_id))
            .find_also_related(secrets::Entity)
            .order_by_asc(connections::Column::Name)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows.into_iter().map(|(c, s)| view(c, s.map(|s| s.name))).collect())
    }

    /// Audited as `connection.deleted`.
    pub async fn delete(&self, by: &Actor, id: Uuid) -> Result<(), AppError> {
        let row = self.own(by.org, id).await?;
        let mut txn = self.audit.begin().await?;
        let deleted = connections::Entity::delete_many()
            .filter(connections::Column::Id.eq(id))
            .filter(connections::Column::SponsorId.eq(by.org))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        if deleted.rows_affected == 0 {
            return Err(AppError::not_found("connection"));
        }
        let detail = serde_json::json!({"connection": id, "name": row.name});
        txn.append(AuditEntry::by_member("connection.deleted", by, detail)).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The connection an agent named in a gateway URL, among its sponsor's.
    pub async fn by_name(
        &self,
        sponsor_id: Uuid,
        name: &str,
    ) -> Result<Option<(connections::Model, Option<String>)>, AppError> {
        self.store.connection(sponsor_id, name).await
    }
}
