//! Access tokens: short-lived JWTs, HS256 only. Every registered claim is checked:
//! `exp` (required, not past), `nbf` (not in the future), `iat` (required, not in the
//! future, before `exp`, and no older than a token's lifetime allows), `iss` and
//! `aud` (required, ours), plus our `kind`. Anything else — `none`, another
//! algorithm, another token kind, a bad signature — is rejected. (Access tokens are
//! the only JWTs AEGIS issues: refresh tokens and agent keys are opaque.)

use std::time::Duration;

use app::error::AppError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "aegis";
const AUDIENCE: &str = "aegis-sponsor";
const KIND_ACCESS: &str = "access";
/// Clock skew tolerated when checking `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    /// Session (refresh-token family) id, so sign-out ends the access token too.
    pub sid: Uuid,
    pub kind: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    /// Not before: equal to `iat` when issued. Older tokens without it are checked on
    /// `iat` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    pub jti: Uuid,
}

/// Who an access token is for: a person and their session. Which organization
/// they act in, and as what, is decided per request ([`crate::orgs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    /// The refresh-token family this access token belongs to.
    pub session_id: Uuid,
}

#[derive(Clone)]
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl AccessTokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> Result<String, AppError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            kind: KIND_ACCESS.into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            nbf: Some(now),
            exp: now + self.ttl.as_secs() as i64,
            jti: Uuid::new_v4(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AppError::internal())
    }

    /// Checks signature, algorithm, type, kind, issuer, audience, expiry, not-before
    /// and issued-at.
    pub fn verify(&self, token: &str) -> Result<Identity, AppError> {
        let invalid = || AppError::unauthorized("invalid or expired access token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != Algorithm::HS256 || header.typ.as_deref() != Some("JWT") {
            return Err(invalid());
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| invalid())?;
        if data.claims.kind != KIND_ACCESS || !self.times_are_sane(&data.claims) {
            return Err(invalid());
        }
        Ok(Identity { user_id: data.claims.sub, session_id: data.claims.sid })
    }

    /// `iat` not in the future, `nbf` (the library checks it against now) not before
    /// `iat`, `exp` after `iat` by at most this server's token lifetime.
    fn times_are_sane(&self, c: &Claims) -> bool {
        let now = chrono::Utc::now().timestamp();
        let leeway = LEEWAY_SECS as i64;
        let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        c.iat <= now.saturating_add(leeway)
            && c.exp > c.iat
            && c.exp.saturating_sub(c.iat) <= lifetime.saturating_add(leeway)
            && c.nbf.is_none_or(|nbf| nbf >= c.iat.saturating_sub(leeway) && nbf < c.exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> AccessTokens {
        AccessTokens::new(SECRET, Duration::from_secs(900))
    }

    /// Signs arbitrary header and claims with HS256 under `key`, like an attacker
    /// with (or without) the key would.
    fn forge(header: serde_json::Value, claims: serde_json::Value, key: &[u8]) -> String {
        use hmac::Mac;
        let signing_input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn claims(overrides: serde_json::Value) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        let mut c = json!({
            "sub": Uuid::new_v4(), "sid": Uuid::new_v4(), "kind": "access", "iss": ISSUER,
            "aud": AUDIENCE, "iat": now, "exp": now + 600, "jti": Uuid::new_v4(),
        });
        for (k, v) in overrides.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn hs256() -> serde_json::Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    #[test]
    fn issued_tokens_verify() {
        let t = tokens();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let who = t.verify(&t.issue(user, session).unwrap()).unwrap();
        assert_eq!((who.user_id, who.session_id), (user, session));
        // The forging helper is faithful: a well-formed forged token with the right key passes.
        assert!(t.verify(&forge(hs256(), claims(json!({})), SECRET)).is_ok());
    }

    #[test]
    fn every_defect_is_rejected() {
        let t = tokens();
        let now = chrono::Utc::now().timestamp();
        let good = t.issue(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        let (head, rest) = good.split_once('.').unwrap();
        let (body, sig) = rest.split_once('.').unwrap();
        let mut flipped = B64.decode(sig).unwrap();
        flipped[0] ^= 1;
        let mut tampered_claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
        tampered_claims["sub"] = json!(Uuid::new_v4());

        let cases: Vec<(&str, String)> = vec![
            ("alg none", format!("{}.{}.", B64.encode(json!({"alg":"none","typ":"JWT"}).to_string()), body)),
            (
                "alg none, no signature part",
                format!("{}.{}", B64.encode(json!({"alg":"none"}).to_string()), body),
            ),
            ("HS512", forge(json!({"alg":"HS512","typ":"JWT"}), claims(json!({})), SECRET)),
            ("RS256 header", forge(json!({"alg":"RS256","typ":"JWT"}), claims(json!({})), SECRET)),
            ("missing exp", forge(hs256(), claims(json!({"exp": null})), SECRET)),
            ("expired beyond leeway", forge(hs256(), claims(json!({"exp": now - 10})), SECRET)),
            ("nbf in the future", forge(hs256(), claims(json!({"nbf": now + 60})), SECRET)),
            ("nbf not a number", forge(hs256(), claims(json!({"nbf": "soon"})), SECRET)),
            ("nbf before iat", forge(hs256(), claims(json!({"nbf": now - 3600})), SECRET)),
            ("iat in the future", forge(hs256(), claims(json!({"iat": now + 60})), SECRET)),
            ("missing iat", forge(hs256(), claims(json!({"iat": null})), SECRET)),
            ("exp before iat", forge(hs256(), claims(json!({"iat": now, "exp": now - 1})), SECRET)),
            (
                "lifetime longer than issued",
                forge(hs256(), claims(json!({"iat": now - 60, "exp": now + 86_400})), SECRET),
            ),
            ("missing iss", forge(hs256(), claims(json!({"iss": null})), SECRET)),
            ("missing aud", forge(hs256(), claims(json!({"aud": null})), SECRET)),
            ("aud list without ours", forge(hs256(), claims(json!({"aud": ["other"]})), SECRET)),
            ("refresh kind", forge(hs256(), claims(json!({"kind": "refresh"})), SECRET)),
            ("missing kind", forge(hs256(), claims(json!({"kind": null})), SECRET)),
            ("wrong typ", forge(json!({"alg":"HS256","typ":"at+jwt"}), claims(json!({})), SECRET)),
            ("wrong issuer", forge(hs256(), claims(json!({"iss": "evil"})), SECRET)),
            ("wrong audience", forge(hs256(), claims(json!({"aud": "agent"})), SECRET)),
            ("wrong key", forge(hs256(), claims(json!({})), b"another-secret-another-secret-xx")),
            ("flipped signature", format!("{head}.{body}.{}", B64.encode(&flipped))),
            ("tampered claims", format!("{head}.{}.{sig}", B64.encode(tampered_claims.to_string()))),
            ("garbage", "not.a.jwt".into()),
            ("empty", String::new()),
        ];
        for (name, token) in cases {
            let err = t.verify(&token).expect_err(name);
            assert_eq!(err.status, 401, "{name}");
        }
    }

    #[test]
    fn issued_tokens_carry_nbf_and_older_ones_without_it_still_verify() {
        let t = tokens();
        let token = t.issue(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        let body = token.split('.').nth(1).unwrap();
        let c: serde_json::Value = serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
        assert_eq!(c["nbf"], c["iat"]);
        assert!(t.verify(&forge(hs256(), claims(json!({"nbf": null})), SECRET)).is_ok());
        let now = chrono::Utc::now().timestamp();
        assert!(t.verify(&forge(hs256(), claims(json!({"nbf": now + 2})), SECRET)).is_ok(), "within leeway");
    }

    #[test]
    fn expiry_within_leeway_is_tolerated() {
        let now = chrono::Utc::now().timestamp();
        assert!(
            tokens()
                .verify(&forge(
                    hs256(),
                    claims(json!({"iat": now - 600, "nbf": now - 600, "exp": now - 2})),
                    SECRET
                ))
                .is_ok()
        );
    }
}
