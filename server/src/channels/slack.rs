//! Slack channels, on the wire: what a Slack channel keeps (its app's bot token and
//! signing secret, sealed together), Slack's `v0` request signatures, the Block Kit
//! message an approval becomes, and the Web API calls that post and update it.
//!
//! The Web API's base URL is the operator's (`AEGIS_SLACK_API_URL`, Slack's own by
//! default), never a tenant's, so these calls do not go through the egress guard;
//! redirects are not followed and nothing from a tenant picks the host.

use std::time::Duration;

use entity::{channel_deliveries, channels, slack_messages};
use hmac::{Hmac, Mac};
use sea_orm::{DatabaseConnection, EntityTrait, Set};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::card::ApprovalCard;
use super::key_context;
use crate::db::now;
use crate::secrets::vault::Vault;
use app::error::AppError;

/// Slack's own Web API.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";
/// How far a request's timestamp may be from now (Slack's advice: five minutes).
pub const MAX_SKEW_SECS: i64 = 300;
/// The buttons' action ids.
pub const APPROVE: &str = "aegis_approve";
pub const REJECT: &str = "aegis_reject";

/// What a Slack channel keeps sealed (context [`key_context`]).
#[derive(Serialize, Deserialize)]
pub struct SlackKeys {
    pub bot_token: String,
    pub signing_secret: String,
}

impl Drop for SlackKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.bot_token.zeroize();
        self.signing_secret.zeroize();
    }
}

/// A Slack channel's fields, checked: the conversation id and the keys.
pub fn validate(
    bot_token: Option<&str>,
    signing_secret: Option<&str>,
    slack_channel: Option<&str>,
) -> Result<(String, SlackKeys), AppError> {
    let token = bot_token.map(str::trim).unwrap_or_default();
    if !token.starts_with("xoxb-")
        || !(10..=256).contains(&token.len())
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AppError::validation("bot_token: a Slack bot token (xoxb-…) is required"));
    }
    let secret = signing_secret.map(str::trim).unwrap_or_default();
    if !(16..=128).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AppError::validation("signing_secret: the Slack app's signing secret is required"));
    }
    let conversation = slack_channel.map(str::trim).unwrap_or_default();
    if !(6..=32).contains(&conversation.len())
        || !conversation.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(AppError::validation(
            "slack_channel: a Slack conversation id such as C0123456789 is required",
        ));
    }
    Ok((
        conversation.to_owned(),
        SlackKeys { bot_token: token.to_owned(), signing_secret: secret.to_owned() },
    ))
}

/// Opens a channel's keys.
pub fn keys(vault: &Vault, channel: &channels::Model) -> Option<SlackKeys> {
    let bytes = Zeroizing::new(
        vault.open_bytes(&key_context(channel.id), &channel.secret_nonce, &channel.secret_sealed).ok()?,
    );
    serde_json::from_slice(&bytes).ok()
}

/// Why a request is not Slack's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No or malformed signature headers, or a signature that does not match.
    Signature,
    /// Signed, but more than [`MAX_SKEW_SECS`] from now (a replay).
    Stale,
}

/// Slack's `v0` signature: `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}` under
/// the app's signing secret, compared in constant time; the timestamp within
/// [`MAX_SKEW_SECS`] of `now` (Unix seconds).
pub fn verify(
    signing_secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    let ts: i64 = timestamp.and_then(|t| t.trim().parse().ok()).ok_or(Refused::Signature)?;
    let given = signature
        .and_then(|s| s.trim().strip_prefix("v0="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Refused::Signature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes()).map_err(|_| Refused::Signature)?;
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| Refused::Signature)?;
    if (now - ts).abs() > MAX_SKEW_SECS {
        return Err(Refused::Stale);
    }
    Ok(())
}

/// The Web API, at the operator's base URL, with a bot token per call.
#[derive(Clone)]
pub struct SlackApi {
    base: String,
    http: reqwest::Client,
}

impl SlackApi {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent("AEGIS-Slack/1")
            .build()
            .expect("the Slack HTTP client builds");
        Self { base: base.trim_end_matches('/').to_owned(), http }
    }

    /// Calls `method`; Slack's answer when `ok`, else a short error (never the token).
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        body: &Value,
    ) -> Result<Value, (Option<u16>, String)> {
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                let text =
                    if e.is_timeout() { "Slack did not answer in time" } else { "could not reach Slack" };
                (None, text.to_owned())
            })?;
        let code = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err((Some(code), format!("Slack answered {}", resp.status())));
        }
        let answer: Value =
            resp.json().await.map_err(|_| (Some(code), "Slack's answer is not JSON".to_owned()))?;
        if answer["ok"] != true {
            let error: String = answer["error"].as_str().unwrap_or("unknown").chars().take(80).collect();
            return Err((Some(code), format!("Slack refused {method}: {error}")));
        }
        Ok(answer)
    }
}

impl ApprovalCard {
    /// Block Kit: the normalised request (method, URL, agent, cost, the policy's
    /// reasons), never a body or header value; Approve / Reject while pending, the
    /// outcome and who decided after.
    pub fn message(&self, conversation: &str, link: Option<&str>) -> Value {
        let a = &self.approval;
        let title = self.title();
        let mut blocks = vec![
            json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", escape(&title))}}),
            json!({"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Method*\n{}", escape(&a.method))},
                {"type": "mrkdwn", "text": format!("*Agent*\n{}", escape(&self.agent))},
                {"type": "mrkdwn", "text": format!("*URL*\n`{}`", escape(&self.url()))},
                {"type": "mrkdwn", "text": format!("*Cost*\n{}", self.cost())},
                {"type": "mrkdwn", "text": format!("*Policy's reasons*\n{}", escape(&self.reasons()))},
                {"type": "mrkdwn", "text": format!("*Body*\n{}", self.body())},
            ]}),
        ];
        if a.approvers_required > 1 {
            let so_far = if self.votes.is_empty() { "none yet".to_owned() } else { self.votes.join(", ") };
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text":
                escape(&format!("Needs {} approvers; approved so far: {so_far}", a.approvers_required))}]}));
        }
        let text = match self.outcome() {
            None => {
                blocks.push(json!({"type": "actions", "block_id": "aegis_decision", "elements": [
                    {"type": "button", "action_id": APPROVE, "style": "primary", "value": a.id.to_string(),
                     "text": {"type": "plain_text", "text": "Approve"}},
                    {"type": "button", "action_id": REJECT, "style": "danger", "value": a.id.to_string(),
                     "text": {"type": "plain_text", "text": "Reject"}},
                ]}));
                title
            }
            Some(outcome) => {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", escape(&outcome))}}));
                format!("{title}: {outcome}")
            }
        };
        if let Some(link) = link {
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
                "text": format!("<{link}|Open in AEGIS> (sign-in required)")}]}));
        }
        json!({"channel": conversation, "text": text, "blocks": blocks})
    }
}

/// Slack's mrkdwn escapes: `&`, `<` and `>` (so a URL or name cannot inject a link or mention).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Any other event: its type and its small, secret-free `data`.
fn event_message(conversation: &str, row: &channel_deliveries::Model) -> Value {
    let payload: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
    let details: String = payload["data"]["details"].to_string().chars().take(500).collect();
    let text = format!("AEGIS: {}", row.event_type);
    json!({"channel": conversation, "text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*\n```{}```", escape(&text), escape(&details))}},
    ]})
}

/// The approval an event is about, if any.
/// The dashboard's page for an approval, when the server knows its public URL.
pub fn approval_link(public_url: Option<&str>, id: Uuid) -> Option<String> {
    public_url.map(|base| format!("{base}/approvals/{id}"))
}

/// Posts or updates what a delivery says: an approval's message is posted once
/// per channel and updated in place by later events about it; other events are
/// posted as they come. Returns Slack's HTTP status, or an error to log.
pub async fn deliver(
    db: &DatabaseConnection,
    api: &SlackApi,
    vault: &Vault,
    public_url: Option<&str>,
    row: &channel_deliveries::Model,
    channel: &channels::Model,
) -> Result<u16, (Option<u16>, String)> {
    let conversation = channel.slack_channel.clone().unwrap_or_default();
    let keys = keys(vault, channel).ok_or((None, "the Slack keys could not be opened".to_owned()))?;
    let card = super::card::of_delivery(db, channel, row)
        .await
        .map_err(|_| (None, "the approval could not be read".to_owned()))?;
    let Some(card) = card else {
        api.call(&keys.bot_token, "chat.postMessage", &event_message(&conversation, row)).await?;
        return Ok(200);
    };
    let link = approval_link(public_url, card.approval.id);
    refresh(db, api, &keys.bot_token, channel, &card, link.as_deref()).await
}

/// Posts an approval's message, or updates the one already posted on this channel.
pub async fn refresh(
    db: &DatabaseConnection,
    api: &SlackApi,
    token: &str,
    channel: &channels::Model,
    card: &ApprovalCard,
    link: Option<&str>,
) -> Result<u16, (Option<u16>, String)> {
    let conversation = channel.slack_channel.clone().unwrap_or_default();
    let db_error = |_| (None, "the Slack message could not be recorded".to_owned());
    let posted =
        slack_messages::Entity::find_by_id((channel.id, card.approval.id)).one(db).await.map_err(db_error)?;
    let mut message = card.message(&conversation, link);
    if let Some(posted) = posted {
        message["channel"] = json!(posted.slack_channel);
        message["ts"] = json!(posted.ts);
        api.call(token, "chat.update", &message).await?;
        return Ok(200);
    }
    let answer = api.call(token, "chat.postMessage", &message).await?;
    if let (Some(ts), Some(at)) = (answer["ts"].as_str(), answer["channel"].as_str()) {
        slack_messages::Entity::insert(slack_messages::ActiveModel {
            channel_id: Set(channel.id),
            approval_id: Set(card.approval.id),
            slack_channel: Set(at.to_owned()),
            ts: Set(ts.to_owned()),
            created_at: Set(now()),
        })
        .on_conflict_do_nothing()
        .exec(db)
        .await
        .map_err(db_error)?;
    }
    Ok(200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
    #[test]
    fn slacks_documented_example_verifies() {
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let ts = 1531420618;
        let documented = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(verify(secret, Some("1531420618"), Some(documented), body, ts + 10), Ok(()));
        assert_eq!(sign(secret, ts, body), documented);
    }

    #[test]
    fn wrong_signatures_and_old_timestamps_are_refused() {
        let secret = "0123456789abcdef0123456789abcdef";
        let body = b"payload=%7B%7D";
        let now = 1_800_000_000;
        let good = sign(secret, now, body);
        assert_eq!(verify(secret, Some(&now.to_string()), Some(&good), body, now), Ok(()));
        let flipped = b"payload=%7B%7E";
        assert_eq!(
            verify(secret, Some(&now.to_string()), Some(&good), flipped, now),
            Err(Refused::Signature)
        );
        let other = sign("another-secret-0000000000000000", now, body);
        assert_eq!(verify(secret, Some(&now.to_string()), Some(&other), body, now), Err(Refused::Signature));
        for missing in [(None, Some(good.as_str())), (Some("x"), Some(good.as_str())), (Some("1"), None)] {
            assert_eq!(verify(secret, missing.0, missing.1, body, now), Err(Refused::Signature));
        }
        let old = now - MAX_SKEW_SECS - 1;
        let signed_old = sign(secret, old, body);
        assert_eq!(verify(secret, Some(&old.to_string()), Some(&signed_old), body, now), Err(Refused::Stale));
        let edge = now - MAX_SKEW_SECS;
        assert_eq!(
            verify(secret, Some(&edge.to_string()), Some(&sign(secret, edge, body)), body, now),
            Ok(())
        );
    }

    #[test]
    fn fields_are_checked() {
        let ok = validate(Some("xoxb-1-2-abc"), Some("0123456789abcdef0123"), Some("C0APPROVALS"));
        assert_eq!(ok.unwrap().0, "C0APPROVALS");
        for (t, s, c) in [
            (None, Some("0123456789abcdef0123"), Some("C0APPROVALS")),
            (Some("xoxp-user-token"), Some("0123456789abcdef0123"), Some("C0APPROVALS")),
            (Some("xoxb-1-2-abc"), Some("short"), Some("C0APPROVALS")),
            (Some("xoxb-1-2-abc"), Some("0123456789abcdef0123"), Some("#general")),
        ] {
            assert!(validate(t, s, c).is_err(), "{t:?} {c:?}");
        }
    }

    #[test]
    fn names_and_urls_cannot_inject_mrkdwn() {
        assert_eq!(
            escape("<https://evil|click> & <!channel>"),
            "&lt;https://evil|click&gt; &amp; &lt;!channel&gt;"
        );
    }
}
