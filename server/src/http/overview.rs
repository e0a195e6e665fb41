//! The overview's numbers (`GET /api/dashboard/stats`). Thin: calls the
//! [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{DashboardStats, StatsQuery, StatsRange};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiQuery, Sponsor};
use super::openapi::ErrorBody;

#[utoipa::path(get, path = "/api/dashboard/stats", tag = "dashboard",
    summary = "The overview's numbers",
    description = "Actions and denials today (UTC), spend against limits, pending approvals, agents by status and trust tier, a time series (24 hourly or 30 daily UTC buckets of allow/deny/error counts and spend in micro-units) and the last 10 audit records.",
    params(StatsQuery),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The numbers", body = DashboardStats),
        (status = 422, description = "`invalid_range`: range must be `24h` or `30d`", body = ErrorBody),
    ))]
pub async fn stats(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> ApiResult<impl IntoResponse> {
    let range = StatsRange::parse(query.range.as_deref())?;
    Ok(Json(s.services.dashboard_stats(&sponsor, range).await?))
}
