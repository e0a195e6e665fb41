//! Connections: named upstreams for gateway mode. An unmodified SDK pointed at
//! `/api/gw/{name}` reaches `base_url` through the full pipeline, with the
//! connection's secret swapped in for the agent's AEGIS key.

use std::sync::Arc;

use app::error::AppError;
use app::model::{ConnectionView, NewConnection};
use app::money::MAX_MICROS;
use entity::{connections, secrets};
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use crate::db::{internal, now, unique_or_internal};
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
}

fn view(row: connections::Model, secret: Option<String>) -> ConnectionView {
    ConnectionView {
        id: row.id,
        gateway_path: format!("/api/gw/{}", row.name),
        name: row.name,
        base_url: row.base_url,
        secret,
        cost_micros: row.cost_micros,
        created_at: row.created_at,
    }
}

impl ConnectionService {
    pub fn new(
        db: DatabaseConnection,
        store: Arc<dyn CallStore>,
        secrets: SecretService,
        egress: EgressGuard,
    ) -> Self {
        Self { db, store, secrets, egress }
    }

    pub async fn create(&self, sponsor_id: Uuid, input: NewConnection) -> Result<ConnectionView, AppError> {
        let name = crate::names::identifier(&input.name, "connection name")?;
        let base = input.base_url.trim().trim_end_matches('/').to_owned();
        let target = self
            .egress
            .check_url(&base)
            .map_err(|d| AppError::new(422, "invalid_base_url", format!("base_url: {}", d.reason)))?;
        if target.query.is_some() || target.url.fragment().is_some() {
            return Err(AppError::new(422, "invalid_base_url", "base_url must not have a query or fragment"));
        }
        let cost = input.cost_micros.unwrap_or(0);
        if !(0..=MAX_MICROS).contains(&cost) {
            return Err(AppError::validation("cost_micros must be between 0 and 10^15"));
        }
        let secret = match input.secret.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
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
        let at = now();
        let row = connections::ActiveModel {
            id: Set(Uuid::now_v7()),
            sponsor_id: Set(sponsor_id),
            name: Set(name),
            base_url: Set(base),
            secret_id: Set(secret.as_ref().map(|s| s.id)),
            cost_micros: Set(cost),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(&self.db)
        .await
        .map_err(|e| {
            unique_or_internal(
                e,
                AppError::conflict("connection_name_taken", "a connection with this name exists"),
            )
        })?;
        Ok(view(row, secret.map(|s| s.name)))
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

    pub async fn delete(&self, sponsor_id: Uuid, id: Uuid) -> Result<(), AppError> {
        let deleted = connections::Entity::delete_many()
            .filter(connections::Column::Id.eq(id))
            .filter(connections::Column::SponsorId.eq(sponsor_id))
            .exec(&self.db)
            .await
            .map_err(internal)?;
        if deleted.rows_affected == 0 {
            return Err(AppError::not_found("connection"));
        }
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
