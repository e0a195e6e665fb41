//! Notification channels: signed webhooks, Slack, and their delivery logs.
//! Thin: each calls the [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{
    ChannelCreated, ChannelPatch, ChannelView, DeliveryPage, DeliveryView, NewChannel, SlackLinkRequest,
    SlackLinked,
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

#[utoipa::path(get, path = "/api/channels", tag = "channels",
    summary = "The organization's notification channels",
    description = "Oldest first; never a signing secret.",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Channels", body = Vec<ChannelView>)))]
pub async fn list(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_channels(&sponsor).await?))
}

#[utoipa::path(post, path = "/api/channels", tag = "channels",
    summary = "Add a webhook, Slack or email channel",
    description = "Owners and admins. `{\"kind\": \"webhook\", \"url\": \"https://…\", \"events\": [\"approval.requested\", …]}`. Every event of those types is POSTed to `url`, signed as Standard Webhooks defines (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), with the `secret` in this answer: it is shown once. The URL passes AEGIS's egress rules (no private, loopback or metadata targets) and must be `https` unless `AEGIS_WEBHOOK_ALLOW_HTTP` is on. `{\"kind\": \"slack\", \"bot_token\": \"xoxb-…\", \"signing_secret\", \"slack_channel\": \"C…\", \"events\"}`: approvals as Block Kit messages with Approve / Reject (the Slack app's keys are sealed, never shown). `{\"kind\": \"email\", \"events\"}`: emails to the members whose role can act (approvals to those who decide, the rest to owners and admins).",
    request_body = NewChannel,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The channel and its signing secret (shown once)", body = ChannelCreated),
        (status = 400, description = "`webhook_url_refused`: the egress rules refuse the URL, or it is not https; `unknown_event`: not an event type; `email_not_configured`: an email channel on a server without `AEGIS_SMTP_URL`", body = ErrorBody),
        (status = 409, description = "`channel_limit`: the organization has 20 channels", body = ErrorBody),
        (status = 422, description = "`validation_failed`: no events, an unknown kind, or a field the kind lacks or does not take", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewChannel>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_channel(&sponsor, input).await?)))
}

#[utoipa::path(patch, path = "/api/channels/{id}", tag = "channels",
    summary = "Change a channel's events, or turn it off or on",
    description = "Owners and admins. Turning a channel back on clears its failure streak; its pending deliveries resume.",
    params(("id" = Uuid, Path, description = "Channel id")),
    request_body = ChannelPatch,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The channel", body = ChannelView),
        (status = 400, description = "`unknown_event`: not an event type", body = ErrorBody),
        (status = 404, description = "`not_found`: no such channel in this organization", body = ErrorBody),
    ))]
pub async fn update(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<ChannelPatch>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_channel(&sponsor, id, patch).await?))
}

#[utoipa::path(delete, path = "/api/channels/{id}", tag = "channels",
    summary = "Remove a channel",
    description = "Owners and admins. Its delivery log goes with it; nothing more is sent.",
    params(("id" = Uuid, Path, description = "Channel id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: no such channel in this organization", body = ErrorBody),
    ))]
pub async fn delete(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_channel(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/channels/{id}/deliveries", tag = "channels",
    summary = "A channel's delivery log",
    description = "The newest 100 deliveries: `status` (`pending`, `delivered`, `failed`), attempts, the last status code and error (never the URL), when the next attempt is due.",
    params(("id" = Uuid, Path, description = "Channel id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "Deliveries, newest first", body = DeliveryPage),
        (status = 404, description = "`not_found`: no such channel in this organization", body = ErrorBody),
    ))]
pub async fn deliveries(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.channel_deliveries(&sponsor, id).await?))
}

#[utoipa::path(post, path = "/api/channels/{id}/test", tag = "channels",
    summary = "Send a test event",
    description = "Owners and admins. Sends one signed `channel.test` event now (also to a disabled channel) and answers with its delivery: `delivered`, or `failed` with the endpoint's status or the error. Not retried; not counted in the failure streak.",
    params(("id" = Uuid, Path, description = "Channel id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The test delivery", body = DeliveryView),
        (status = 404, description = "`not_found`: no such channel in this organization", body = ErrorBody),
    ))]
pub async fn test(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.test_channel(&sponsor, id).await?))
}

#[utoipa::path(post, path = "/api/slack/links", tag = "channels",
    summary = "Link a Slack user to yourself",
    description = "Any member. A Slack user who clicks Approve or Reject before being linked is shown (only to them, in Slack) a single-use code, valid 15 minutes; the member who sends it here while signed in is linked to that Slack user, and that user's clicks are then decided as this member with their role at the time of the click. Audited as `channel.slack_linked`.",
    request_body = SlackLinkRequest,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The Slack user now linked to you", body = SlackLinked),
        (status = 404, description = "`slack_link_invalid`: no such code (used, expired, or another organization's)", body = ErrorBody),
    ))]
pub async fn link_slack(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<SlackLinkRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.link_slack(&sponsor, &input.token).await?))
}

#[utoipa::path(post, path = "/api/slack/channels/{id}/interactions", tag = "channels",
    summary = "Slack's interactivity endpoint for a Slack channel",
    description = "The Request URL of the Slack app's \"Interactivity & Shortcuts\" (the channel's `interactivity_path`). Authenticated by Slack's request signature: `X-Slack-Signature: v0=<hex HMAC-SHA256 of v0:{timestamp}:{body}>` under the app's signing secret, with `X-Slack-Request-Timestamp` within five minutes. A click on Approve or Reject is decided as the linked member (an unlinked Slack user is sent a link code instead); Slack's retries and repeated clicks decide once.",
    params(("id" = Uuid, Path, description = "Channel id")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`payload=<Slack's interaction JSON>`"),
    responses(
        (status = 200, description = "Taken (the outcome is shown in Slack)"),
        (status = 400, description = "`invalid_slack_payload`: signed, but not an interaction payload", body = ErrorBody),
        (status = 401, description = "`slack_signature_invalid`, `slack_timestamp_stale`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such Slack channel", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = ErrorBody),
    ))]
pub async fn slack_interactions(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let req = crate::channels::slack_clicks::SlackRequest {
        timestamp: header("x-slack-request-timestamp"),
        signature: header("x-slack-signature"),
        body: &body,
    };
    s.services.slack_interaction(id, req).await?;
    Ok(StatusCode::OK)
}
