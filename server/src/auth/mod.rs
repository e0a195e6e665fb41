//! Sponsor accounts and sessions: registration, sign-in, refresh-token rotation with
//! reuse detection, sign-out, and access-token checks.

pub mod cookies;
pub mod password;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use app::error::AppError;
use app::model::{
    AuthResponse, ClientMeta, Credentials, Registration, SessionUser, SessionView, TokenPair, UserView,
};
use chrono::{DateTime, Utc};
use entity::{memberships, organizations, refresh_families, refresh_tokens, users};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use crate::db::{internal, now, unique_or_internal};
use crate::digest::{random_hex, sha256_hex};
use password::Passwords;
use throttle::LoginThrottle;
use tokens::{AccessTokens, Identity};

/// Refresh tokens live at most this long, and never beyond their family's life.
const REFRESH_TOKEN_PREFIX: &str = "rt_";

#[derive(Clone)]
pub struct AuthService {
    db: DatabaseConnection,
    passwords: Passwords,
    tokens: AccessTokens,
    throttle: LoginThrottle,
    refresh_ttl: Duration,
    in_flight: InFlightRefreshes,
}

type SharedRefresh = Arc<tokio::sync::OnceCell<Result<AuthResponse, AppError>>>;

/// Browser refreshes now being rotated, by token hash. Only for the duration of one
/// rotation: a request presenting the same cookie *while* it rotates shares the
/// outcome; once it is done the entry is gone, and the old token again is reuse.
/// The lock guards only the map (never held across an await or a database call).
type InFlightRefreshes = Arc<std::sync::Mutex<std::collections::HashMap<String, SharedRefresh>>>;

/// Removes a rotation's entry when its leader finishes (or is cancelled).
struct LeaderGuard<'a> {
    map: &'a InFlightRefreshes,
    key: String,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// Founds `user`'s own organization (same id) with them as its owner: part of
/// registration, in its transaction.
pub async fn found_organization<C: ConnectionTrait>(db: &C, user: &users::Model) -> Result<(), AppError> {
    organizations::ActiveModel {
        id: Set(user.id),
        name: Set(user.name.clone()),
        created_at: Set(user.created_at),
        approvers_required: Set(1),
        approvers_cost_above_micros: Set(None),
        approvers_reasons: Set(None),
    }
    .insert(db)
    .await
    .map_err(internal)?;
    memberships::ActiveModel {
        org_id: Set(user.id),
        user_id: Set(user.id),
        role: Set(app::model::Role::Owner.as_str().to_owned()),
        created_at: Set(user.created_at),
    }
    .insert(db)
    .await
    .map_err(internal)?;
    Ok(())
}

fn view(user: &users::Model) -> UserView {
    UserView { id: user.id, email: user.email.clone(), name: user.name.clone(), created_at: user.created_at }
}

/// Lower-cased and trimmed; checked for the shape of an address.
pub fn normalise_email(email: &str) -> Result<String, AppError> {
    let email = email.trim().to_lowercase();
    if email.len() > 254 || !email_address::EmailAddress::is_valid(&email) {
        return Err(AppError::validation("email is not a valid address"));
    }
    Ok(email)
}

fn clean_name(name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(AppError::validation("name must be 1 to 100 printable characters"));
    }
    Ok(name.to_owned())
}

fn invalid_credentials() -> AppError {
    AppError::new(401, "invalid_credentials", "invalid email or password")
}

fn invalid_refresh() -> AppError {
    AppError::new(401, "invalid_refresh_token", "refresh token is invalid, expired or revoked")
}

impl AuthService {
    pub fn new(
        db: DatabaseConnection,
        tokens: AccessTokens,
        throttle: LoginThrottle,
        refresh_ttl: Duration,
    ) -> Self {
        Self { db, passwords: Passwords::new(), tokens, throttle, refresh_ttl, in_flight: Arc::default() }
    }

    pub fn access_tokens(&self) -> &AccessTokens {
        &self.tokens
    }

    pub async fn register(&self, input: Registration, client: ClientMeta) -> Result<AuthResponse, AppError> {
        let email = normalise_email(&input.email)?;
        let name = clean_name(&input.name)?;
        password::check_policy(&input.password)?;
        // Registration costs a hash too: a per-address budget of its own.
        self.throttle.admit_registration(client.ip.as_deref()).await?;
        let hash = self.passwords.hash(&input.password).await?;
        let at = now();
        let txn = self.db.begin().await.map_err(internal)?;
        let user = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            email: Set(email),
            name: Set(name),
            password_hash: Set(hash),
            created_at: Set(at),
            updated_at: Set(at),
            disabled_at: Set(None),
        }
        .insert(&txn)
        .await
        .map_err(|e| {
            unique_or_internal(
                e,
                AppError::conflict("email_taken", "an account with this email already exists"),
            )
        })?;
        found_organization(&txn, &user).await?;
        txn.commit().await.map_err(internal)?;
        self.start_session(&user, &client).await
    }

    pub async fn login(&self, input: Credentials, client: ClientMeta) -> Result<AuthResponse, AppError> {
        let ip = client.ip.as_deref();
        // A malformed email is just a failed sign-in (no hint about what exists); it
        // counts against the client but never against any email, and costs no hash.
        let Ok(email) = normalise_email(&input.email) else {
            self.throttle.admit_login(None, ip).await?;
            return Err(invalid_credentials());
        };
        // Counted before the hash, atomically: parallel guesses cannot pass the limit.
        self.throttle.admit_login(Some(&email), ip).await?;
        let user = users::Entity::find()
            .filter(users::Column::Email.eq(&email))
            .one(&self.db)
            .await
            .map_err(internal)?;
        let stored = user.as_ref().map(|u| u.password_hash.as_str());
        let matched = input.password.len() <= password::MAX_BYTES
            && self.passwords.verify(&input.password, stored).await?;
        match user {
            Some(user) if matched && user.disabled_at.is_none() => {
                self.throttle.succeeded(&email, ip).await;
                self.start_session(&user, &client).await
            }
            _ => Err(invalid_credentials()),
        }
    }

    async fn start_session(
        &self,
        user: &users::Model,
        client: &ClientMeta,
    ) -> Result<AuthResponse, AppError> {
        let at = now();
        let family_expires =
            at + chrono::Duration::from_std(self.refresh_ttl).unwrap_or(chrono::Duration::days(30));
        let family = refresh_families::ActiveModel {
            id: Set(Uuid::now_v7()),
            user_id: Set(user.id),
            created_at: Set(at),
            last_used_at: Set(at),
            expires_at: Set(family_expires),
            revoked_at: Set(None),
            revoked_reason: Set(None),
            user_agent: Set(client.user_agent.as_ref().map(|u| u.chars().take(300).collect())),
            ip: Set(client.ip.clone()),
        }
        .insert(&self.db)
        .await
        .map_err(internal)?;
        let refresh = self.insert_refresh_token(&self.db, family.id, family.expires_at).await?;
        self.respond(user, family.id, refresh)
    }

    async fn insert_refresh_token<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        family_id: Uuid,
        family_expires: DateTime<Utc>,
    ) -> Result<String, AppError> {
        let token = format!("{REFRESH_TOKEN_PREFIX}{}", random_hex(32));
        refresh_tokens::ActiveModel {
            id: Set(Uuid::now_v7()),
            family_id: Set(family_id),
            token_hash: Set(sha256_hex(token.as_bytes())),
            created_at: Set(now()),
            expires_at: Set(family_expires),
            rotated_at: Set(None),
        }
        .insert(db)
        .await
        .map_err(internal)?;
        Ok(token)
    }

    fn respond(
        &self,
        user: &users::Model,
        session_id: Uuid,
        refresh_token: String,
    ) -> Result<AuthResponse, AppError> {
        Ok(AuthResponse {
            tokens: TokenPair {
                access_token: self.tokens.issue(user.id, session_id)?,
                refresh_token,
                token_type: "Bearer".into(),
                expires_in: self.tokens.ttl().as_secs(),
            },
            user: view(user),
        })
    }

    /// Rotates a refresh token. Presenting a token that was already rotated means it
    /// leaked (or raced): the whole family is revoked.
    pub async fn refresh(&self, token: &str, client: &ClientMeta) -> Result<AuthResponse, AppError> {
        if !token.starts_with(REFRESH_TOKEN_PREFIX) || token.len() > 200 {
            return Err(invalid_refresh());
        }
        let hash = sha256_hex(token.as_bytes());
        let Some((row, Some(family))) = refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(&hash))
            .find_also_related(refresh_families::Entity)
            .one(&self.db)
            .await
            .map_err(internal)?
        else {
            return Err(invalid_refresh());
        };
        let at = now();
        if family.revoked_at.is_some() || family.expires_at <= at || row.expires_at <= at {
            return Err(invalid_refresh());
        }
        let txn = self.db.begin().await.map_err(internal)?;
        // Conditional update: of two concurrent uses only one can win.
        let claimed = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::RotatedAt, Expr::value(at))
            .filter(refresh_tokens::Column::Id.eq(row.id))
            .filter(refresh_tokens::Column::RotatedAt.is_null())
            .exec(&txn)
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        if !claimed {
            drop(txn);
            self.revoke_family(family.id, "refresh_token_reuse").await?;
            tracing::warn!(user = %family.user_id, session = %family.id, "refresh token reuse: session revoked");
            return Err(AppError::new(
                401,
                "refresh_token_reused",
                "refresh token was already used; the session has been revoked",
            ));
        }
        let next = self.insert_refresh_token(&txn, family.id, family.expires_at).await?;
        refresh_families::Entity::update_many()
            .col_expr(refresh_families::Column::LastUsedAt, Expr::value(at))
            .col_expr(refresh_families::Column::Ip, Expr::value(client.ip.clone()))
            .filter(refresh_families::Column::Id.eq(family.id))
            .exec(&txn)
            .await
            .map_err(internal)?;
        txn.commit().await.map_err(internal)?;
        let user = users::Entity::find_by_id(family.user_id).one(&self.db).await.map_err(internal)?;
        match user {
            Some(user) if user.disabled_at.is_none() => self.respond(&user, family.id, next),
            _ => Err(invalid_refresh()),
        }
    }

    /// [`Self::refresh`] for a browser, whose parallel requests carry one cookie:
    /// those that arrive while a rotation of that token is in progress share its
    /// outcome (single-flight, no lock held across the database round trip). A token
    /// presented after its rotation has finished is reuse: the family is revoked.
    pub async fn refresh_shared(&self, token: &str, client: &ClientMeta) -> Result<AuthResponse, AppError> {
        let key = sha256_hex(token.as_bytes());
        let (cell, leader) = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(cell) => (cell.clone(), None),
                None => {
                    let cell = SharedRefresh::default();
                    map.insert(key.clone(), cell.clone());
                    (cell, Some(LeaderGuard { map: &self.in_flight, key }))
                }
            }
        };
        let outcome = cell.get_or_init(|| self.refresh(token, client)).await.clone();
        drop(leader);
        outcome
    }

    pub async fn logout(&self, session: &SessionUser) -> Result<(), AppError> {
        self.revoke_family(session.session_id, "logout").await
    }

    async fn revoke_family(&self, family_id: Uuid, reason: &str) -> Result<(), AppError> {
        refresh_families::Entity::update_many()
            .col_expr(refresh_families::Column::RevokedAt, Expr::value(now()))
            .col_expr(refresh_families::Column::RevokedReason, Expr::value(reason))
            .filter(refresh_families::Column::Id.eq(family_id))
            .filter(refresh_families::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Verifies an access token and that its session is still live, so sign-out and
    /// reuse revocation take effect at once rather than when the token expires.
    pub async fn authenticate(&self, access_token: &str) -> Result<Identity, AppError> {
        let session = self.tokens.verify(access_token)?;
        let live = refresh_families::Entity::find_by_id(session.session_id)
            .one(&self.db)
            .await
            .map_err(internal)?
            .is_some_and(|f| f.user_id == session.user_id && f.revoked_at.is_none() && f.expires_at > now());
        if !live {
            return Err(AppError::unauthorized("session has ended; sign in again"));
        }
        Ok(session)
    }

    pub async fn user(&self, session: &SessionUser) -> Result<UserView, AppError> {
        users::Entity::find_by_id(session.user_id)
            .one(&self.db)
            .await
            .map_err(internal)?
            .map(|u| view(&u))
            .ok_or_else(|| AppError::unauthorized("account no longer exists"))
    }
}

impl AuthService {
    /// Most sessions a sponsor is shown; older ones still work until they expire.
    const MAX_LISTED_SESSIONS: u64 = 100;

    /// The sponsor's live sessions (not revoked, not expired), most recently used first.
    pub async fn sessions(&self, session: &SessionUser) -> Result<Vec<SessionView>, AppError> {
        let rows = refresh_families::Entity::find()
            .filter(refresh_families::Column::UserId.eq(session.user_id))
            .filter(refresh_families::Column::RevokedAt.is_null())
            .filter(refresh_families::Column::ExpiresAt.gt(now()))
            .order_by_desc(refresh_families::Column::LastUsedAt)
            .limit(Self::MAX_LISTED_SESSIONS)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|f| SessionView {
                current: f.id == session.session_id,
                id: f.id,
                created_at: f.created_at,
                last_used_at: f.last_used_at,
                expires_at: f.expires_at,
                user_agent: f.user_agent,
                ip: f.ip,
            })
            .collect())
    }

    /// Revokes one of the sponsor's sessions; another sponsor's (or an unknown or
    /// already ended one) is "not found".
    pub async fn revoke_session(&self, session: &SessionUser, id: Uuid) -> Result<(), AppError> {
        let live = refresh_families::Entity::find_by_id(id)
            .filter(refresh_families::Column::UserId.eq(session.user_id))
            .filter(refresh_families::Column::RevokedAt.is_null())
            .one(&self.db)
            .await
            .map_err(internal)?;
        if live.is_none() {
            return Err(AppError::not_found("session"));
        }
        self.revoke_family(id, "revoked").await
    }
}

/// Shared handle used by the HTTP layer.
pub type Auth = Arc<AuthService>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalise_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in
            ["", "alice", "@example.com", "alice@", "a b@example.com", &format!("{}@x.io", "a".repeat(260))]
        {
            assert_eq!(normalise_email(bad).unwrap_err().status, 422, "{bad}");
        }
    }

    async fn service() -> (AuthService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::connect(&crate::db::resolve_url(None, dir.path())).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let window = Duration::from_secs(900);
        let throttle = LoginThrottle::new(Arc::new(throttle::MemoryCounter::default()), 5, 50, window);
        let tokens = AccessTokens::new(b"0123456789abcdef0123456789abcdef", window);
        (AuthService::new(db, tokens, throttle, Duration::from_secs(86_400)), dir)
    }

    /// Requests that present one refresh token while its rotation is in progress
    /// share that rotation; once it has finished, the same token again is reuse and
    /// ends the session (no cached answer hands the new pair to a replayer).
    #[tokio::test]
    async fn browser_refresh_is_single_flight_and_a_later_replay_is_reuse() {
        let (auth, _dir) = service().await;
        let client = ClientMeta::default();
        let reg = Registration {
            email: "a@example.com".into(),
            password: "correct horse 9".into(),
            name: "A".into(),
        };
        let old = auth.register(reg, client.clone()).await.unwrap().tokens.refresh_token;
        // join_all polls every future before the first rotation's database round trip ends.
        let results = futures::future::join_all((0..8).map(|_| auth.refresh_shared(&old, &client))).await;
        let fresh: Vec<String> = results.into_iter().map(|r| r.unwrap().tokens.refresh_token).collect();
        assert!(fresh.iter().all(|t| *t == fresh[0] && *t != old), "one shared rotation: {fresh:?}");
        assert!(auth.in_flight.lock().unwrap().is_empty(), "nothing remembered after the rotation");

        let replay = auth.refresh_shared(&old, &client).await.unwrap_err();
        assert_eq!((replay.status, replay.code.as_str()), (401, "refresh_token_reused"));
        let after = auth.refresh(&fresh[0], &client).await.unwrap_err();
        assert_eq!(after.code, "invalid_refresh_token", "the whole family is revoked");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(clean_name("  Ada ").unwrap(), "Ada");
        assert!(clean_name("   ").is_err());
        assert!(clean_name(&"x".repeat(101)).is_err());
        assert!(clean_name("a\u{0007}b").is_err());
    }
}
