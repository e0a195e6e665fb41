//! Audit endpoints: list, CSV export, verify. A sponsor sees only records whose
//! `sponsor_id` is theirs, and verification answers only about those (bounded work
//! per call, rate-limited per sponsor); the whole-chain walk is the operator's
//! (`aegis verify-audit`).

use app::backend::Backend;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiQuery, Sponsor};
use super::openapi::ErrorBody;
use crate::audit::{AuditQuery, AuditRecord, SponsorVerifyReport};
use app::model::Page;

#[utoipa::path(get, path = "/api/audit", tag = "audit",
    summary = "Read your audit log",
    description = "Your records only, newest first, keyset-paginated by seq: pass `next_cursor` back as `cursor`. Every stored field is returned, so anyone can recompute a record's hash.",
    params(AuditQuery),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "One page of records", body = Page<AuditRecord>),
        (status = 400, description = "`invalid_agent`, `invalid_kind`, `invalid_decision`, `invalid_from`, `invalid_to`, `invalid_range`, `invalid_limit`, `invalid_cursor`: that parameter is malformed", body = ErrorBody),
    ))]
/// `GET /api/audit?agent=&kind=&decision=&from=&to=&limit=&cursor=`
pub async fn list(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_audit(&sponsor, query).await?))
}

#[utoipa::path(get, path = "/api/audit/export.csv", tag = "audit",
    summary = "Export your audit log as CSV",
    description = "Same filters as the list; `limit` is ignored: every matching record (below `cursor`, when given). Streamed; columns are the record's fields in order.",
    params(AuditQuery),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "`text/csv` attachment `aegis-audit.csv`", content_type = "text/csv", body = String),
        (status = 400, description = "`invalid_agent`, `invalid_kind`, `invalid_decision`, `invalid_from`, `invalid_to`, `invalid_range`, `invalid_limit`, `invalid_cursor`: that parameter is malformed", body = ErrorBody),
    ))]
/// `GET /api/audit/export.csv` with the same filters; streamed chunk by chunk.
pub async fn export_csv(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    csv_response(&s, &sponsor, &query).await
}

/// The dashboard's "Download CSV": the same export, authenticated by the session
/// cookie (the browser middleware put the sponsor in the request).
pub async fn export_csv_for_browser(
    State(s): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let sponsor = request
        .extensions()
        .get::<app::model::SessionUser>()
        .cloned()
        .ok_or_else(|| app::error::AppError::unauthorized("sign in first"))?;
    csv_response(&s, &sponsor, &query).await
}

async fn csv_response(
    s: &AppState,
    sponsor: &app::model::SessionUser,
    query: &AuditQuery,
) -> ApiResult<Response> {
    let org = sponsor.scope(app::model::Access::Read)?;
    let (filter, _) = crate::audit::query::parse_query(query, org)?;
    let stream = s.services.audit.export_csv(filter).await?;
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"aegis-audit.csv\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(get, path = "/api/audit/verify", tag = "audit",
    summary = "Verify your audit records",
    description = "Is every one of your records intact? Verification starts from the latest signed checkpoint (which vouches for the records before it) and each call walks at most 2,000 more records of the chain: seqs without gaps, each record's hash, each `prev_hash` link, each checkpoint's signature and head. The answer counts only your records (`pending` ones are not reached yet: call again). 5 calls in a row, then one every 2 seconds. The operator verifies the whole chain with `aegis verify-audit`.",
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The verdict on your records (`valid: false` with `first_bad_seq` and `reason` when one cannot be trusted)", body = SponsorVerifyReport),
        (status = 429, description = "`rate_limited`: too many verifications; wait `Retry-After` seconds", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`audit_busy`: verification is starting; try again", body = ErrorBody),
    ))]
/// `GET /api/audit/verify`: `{valid, complete, checked, pending, first_bad_seq?, reason?}`.
pub async fn verify(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    let org = sponsor.scope(app::model::Access::Read)?;
    Ok(Json(s.services.audit.verify_for_sponsor(org).await?))
}
