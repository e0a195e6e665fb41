//! Organizations: the caller's organizations, members and their roles, invitations.
//! Thin: each calls the [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{
    AcceptInvitation, InvitationCreated, InvitationView, MemberPatch, MemberView, NewInvitation, OrgSettings,
    OrgView,
};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, Sponsor};
use super::openapi::ErrorBody;

#[utoipa::path(get, path = "/api/orgs", tag = "orgs",
    summary = "Your organizations",
    description = "Every organization you belong to, with your role in each; `default` is the one requests act in without `X-AEGIS-Org` (the one you founded, else the first you joined).",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Your organizations", body = Vec<OrgView>)))]
pub async fn list_orgs(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_orgs(&sponsor).await?))
}

#[utoipa::path(get, path = "/api/orgs/members", tag = "orgs",
    summary = "The organization's members",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Members, oldest first", body = Vec<MemberView>)))]
pub async fn list_members(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_members(&sponsor).await?))
}

#[utoipa::path(patch, path = "/api/orgs/members/{id}", tag = "orgs",
    summary = "Change a member's role",
    description = "Owners only. The last owner cannot be demoted.",
    params(("id" = Uuid, Path, description = "The member's account id")),
    request_body = MemberPatch,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The member", body = MemberView),
        (status = 404, description = "`not_found`: no such member of this organization", body = ErrorBody),
        (status = 409, description = "`last_owner`: the organization would have no owner", body = ErrorBody),
    ))]
pub async fn update_member(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<MemberPatch>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_member(&sponsor, id, patch).await?))
}

#[utoipa::path(delete, path = "/api/orgs/members/{id}", tag = "orgs",
    summary = "Remove a member, or leave",
    description = "Owners remove anyone; every member may remove themself. The last owner cannot go.",
    params(("id" = Uuid, Path, description = "The member's account id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: no such member of this organization", body = ErrorBody),
        (status = 409, description = "`last_owner`: the organization would have no owner", body = ErrorBody),
    ))]
pub async fn remove_member(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.remove_member(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/orgs/invitations", tag = "orgs",
    summary = "The organization's invitations",
    description = "Newest first, with `status` `pending`, `accepted` or `expired`; never the token.",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Invitations", body = Vec<InvitationView>)))]
pub async fn list_invitations(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_invitations(&sponsor).await?))
}

#[utoipa::path(post, path = "/api/orgs/invitations", tag = "orgs",
    summary = "Invite someone",
    description = "Owners and admins, as a role no stronger than their own. The token (in `invite_url` too) is shown once and works once, for 7 days, for the account with this email.",
    request_body = NewInvitation,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The invitation", body = InvitationCreated),
        (status = 409, description = "`too_many_invitations`: 200 are pending", body = ErrorBody),
        (status = 422, description = "`validation_failed`: not an email address", body = ErrorBody),
    ))]
pub async fn invite(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewInvitation>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.invite(&sponsor, input).await?)))
}

#[utoipa::path(delete, path = "/api/orgs/invitations/{id}", tag = "orgs",
    summary = "Revoke a pending invitation",
    params(("id" = Uuid, Path, description = "Invitation id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 204, description = "Revoked: its link no longer works"),
        (status = 404, description = "`invitation_not_found`: no pending invitation with this id", body = ErrorBody),
    ))]
pub async fn revoke_invitation(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.revoke_invitation(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/orgs/invitations/accept", tag = "orgs",
    summary = "Accept an invitation",
    description = "With your own access token: you join the inviting organization with the invitation's role (then act in it with `X-AEGIS-Org`). The invitation must be addressed to your account's email.",
    request_body = AcceptInvitation,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The organization you joined", body = OrgView),
        (status = 403, description = "`invitation_email_mismatch`: the invitation was sent to another address", body = ErrorBody),
        (status = 404, description = "`invitation_not_found`: unknown, already used or revoked", body = ErrorBody),
        (status = 409, description = "`already_member`: you are a member already", body = ErrorBody),
        (status = 410, description = "`invitation_expired`: ask for a new one", body = ErrorBody),
    ))]
pub async fn accept_invitation(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<AcceptInvitation>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.accept_invitation(&sponsor, &input.token).await?))
}

#[utoipa::path(get, path = "/api/orgs/settings", tag = "orgs",
    summary = "The organization's settings",
    description = "The two-person rule: an approval needs `approvers_required` distinct members when its cost is above `approvers_cost_above_micros` or its policy gave one of `approvers_reasons` (with neither set, every approval does); `1` is off.",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "The settings", body = OrgSettings)))]
pub async fn get_settings(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.org_settings(&sponsor).await?))
}

#[utoipa::path(put, path = "/api/orgs/settings", tag = "orgs",
    summary = "Change the organization's settings",
    description = "Owners only; audited (`org.settings_changed`, old and new). Approvals already waiting keep the rule they were parked under.",
    request_body = OrgSettings,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The settings", body = OrgSettings),
        (status = 422, description = "`validation_failed`: `approvers_required` outside 1–10, a negative cost, or a bad reason", body = ErrorBody),
    ))]
pub async fn put_settings(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<OrgSettings>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_org_settings(&sponsor, input).await?))
}
