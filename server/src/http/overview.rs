//! The overview's numbers (`GET /api/dashboard/stats`). Thin: calls the
//! [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{DashboardStats, StatsQuery, StatsRange, UsageQuery, UsageReport};
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

#[utoipa::path(get, path = "/api/usage", tag = "dashboard",
    summary = "What your agents spent, by model, connection, agent and day",
    description = "Calls settled over the last `days` UTC days (today included), summed from the audit log's outcome records: requests, tokens (uncached input, cached input, cache writes, output), what was held before the calls (a metered call's ceiling) and what they were charged, in micro-units. `by_model`, `by_connection` and `by_agent` are dearest first; `by_day` has every day of the period, oldest first. Calls that were not metered count under an empty `connection` and `model`. `through_seq` is the audit record the figures are complete through.",
    params(UsageQuery),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The usage", body = UsageReport),
        (status = 400, description = "`invalid_days`: not a whole number from 1 to 90", body = ErrorBody),
    ))]
pub async fn usage(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.usage(&sponsor, query).await?))
}
