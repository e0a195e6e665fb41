//! Audit endpoints: list, CSV export, verify. A sponsor sees only records whose
//! `sponsor_id` is theirs; verification covers the whole chain.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiQuery, Sponsor};
use crate::audit::AuditQuery;

/// `GET /api/audit?agent=&kind=&decision=&from=&to=&limit=&cursor=`
pub async fn list(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    let (filter, limit) = query.parse(sponsor.user_id)?;
    Ok(Json(s.services.audit.list(&filter, limit).await?))
}

/// `GET /api/audit/export.csv` with the same filters; streamed chunk by chunk.
pub async fn export_csv(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let (filter, _) = query.parse(sponsor.user_id)?;
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

/// `GET /api/audit/verify`: `{valid, checked, first_bad_seq?, reason?, checkpoint?}`.
pub async fn verify(State(s): State<AppState>, Sponsor(_): Sponsor) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.audit.verify(None).await?))
}
