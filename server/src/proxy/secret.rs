//! Just-in-time secrets: put the real credential into the outgoing request at the
//! last moment, and make sure it never comes back out in the response.

use app::model::Injection;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::secrets::UsableSecret;

pub const REDACTED: &str = "[REDACTED]";

/// Adds the secret to `headers` or `url` as its injection says. Any header of the
/// same name the agent sent is replaced.
pub fn inject(secret: &UsableSecret, headers: &mut HeaderMap, url: &mut url::Url) -> Result<(), String> {
    match &secret.inject {
        Injection::Header { header, format } => {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| "invalid injection header".to_owned())?;
            let mut value = HeaderValue::from_str(&format.replace("{secret}", &secret.value))
                .map_err(|_| "the secret cannot be sent in a header".to_owned())?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Injection::QueryParam { query_param } => {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != query_param)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut pairs = url.query_pairs_mut();
            pairs.clear();
            for (k, v) in kept {
                pairs.append_pair(&k, &v);
            }
            pairs.append_pair(query_param, &secret.value);
        }
    }
    Ok(())
}

/// The byte strings that would reveal the secret: the value itself and its
/// percent-encoded form (as it appears in a query string).
fn needles(secret: &UsableSecret) -> Vec<Vec<u8>> {
    let mut out = vec![secret.value.as_bytes().to_vec()];
    let encoded: String = url::form_urlencoded::byte_serialize(secret.value.as_bytes()).collect();
    if encoded != *secret.value {
        out.push(encoded.into_bytes());
    }
    out
}

fn replace_all(haystack: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    let mut found = false;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(REDACTED.as_bytes());
            i += needle.len();
            found = true;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    found.then_some(out)
}

/// Removes every occurrence of the secret from a response's headers and body, in
/// case an upstream echoes what it received.
pub fn scrub(secret: &UsableSecret, headers: &mut HeaderMap, body: Bytes) -> Bytes {
    let needles = needles(secret);
    let mut body = body;
    for needle in &needles {
        if let Some(clean) = replace_all(&body, needle) {
            body = Bytes::from(clean);
        }
    }
    let names: Vec<HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        if !values
            .iter()
            .any(|v| needles.iter().any(|n| v.as_bytes().windows(n.len()).any(|w| w == n.as_slice())))
        {
            continue;
        }
        headers.remove(&name);
        for v in values {
            let mut bytes = v.as_bytes().to_vec();
            for needle in &needles {
                if let Some(clean) = replace_all(&bytes, needle) {
                    bytes = clean;
                }
            }
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                headers.append(name.clone(), v);
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn secret(value: &str, inject: Injection) -> UsableSecret {
        UsableSecret { name: "s".into(), value: Zeroizing::new(value.into()), inject }
    }

    #[test]
    fn header_injection_replaces_agent_value() {
        let s = secret(
            "sk-1",
            Injection::Header { header: "authorization".into(), format: "Bearer {secret}".into() },
        );
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer forged"));
        let mut url = url::Url::parse("https://api.example.com/x").unwrap();
        inject(&s, &mut headers, &mut url).unwrap();
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert_eq!(headers["authorization"], "Bearer sk-1");
        assert!(headers["authorization"].is_sensitive());
    }

    #[test]
    fn query_injection_replaces_agent_value() {
        let s = secret("k&y=1", Injection::QueryParam { query_param: "api_key".into() });
        let mut url = url::Url::parse("https://api.example.com/x?api_key=forged&q=1").unwrap();
        inject(&s, &mut HeaderMap::new(), &mut url).unwrap();
        assert_eq!(url.query(), Some("q=1&api_key=k%26y%3D1"));
    }

    #[test]
    fn scrubbing_removes_raw_and_encoded_forms() {
        let s = secret("sk live/1", Injection::QueryParam { query_param: "k".into() });
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("got sk live/1"));
        headers.insert("x-other", HeaderValue::from_static("fine"));
        let body = scrub(&s, &mut headers, Bytes::from_static(b"a sk live/1 b sk+live%2F1 c"));
        assert_eq!(&body[..], b"a [REDACTED] b [REDACTED] c");
        assert_eq!(headers["x-echo"], "got [REDACTED]");
        assert_eq!(headers["x-other"], "fine");
    }
}
