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

/// Replaces every occurrence of the secret in a byte stream, chunk by chunk, so a
/// response can be scrubbed while it streams. Bytes that could be the start of a
/// secret split across chunks are held back until the next chunk decides.
pub struct Scrubber {
    needles: Vec<zeroize::Zeroizing<Vec<u8>>>,
    longest: usize,
    carry: Vec<u8>,
}

impl Scrubber {
    pub fn new(secret: &UsableSecret) -> Self {
        let needles: Vec<zeroize::Zeroizing<Vec<u8>>> =
            needles(secret).into_iter().filter(|n| !n.is_empty()).map(zeroize::Zeroizing::new).collect();
        let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
        Self { needles, longest, carry: Vec::new() }
    }

    fn scan(&mut self, data: Vec<u8>, last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'outer: while i < data.len() {
            let rest = &data[i..];
            for needle in &self.needles {
                if rest.starts_with(needle.as_slice()) {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += needle.len();
                    continue 'outer;
                }
            }
            // Near the end, a partial match must wait for the next chunk.
            if !last && rest.len() < self.longest && self.needles.iter().any(|n| n.starts_with(rest)) {
                self.carry = rest.to_vec();
                return out;
            }
            out.push(data[i]);
            i += 1;
        }
        self.carry.clear();
        out
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(chunk);
        self.scan(data, false)
    }

    pub fn finish(mut self) -> Vec<u8> {
        let data = std::mem::take(&mut self.carry);
        self.scan(data, true)
    }

    /// Scrubs one complete value.
    pub fn all(secret: &UsableSecret, bytes: &[u8]) -> Vec<u8> {
        let mut s = Self::new(secret);
        let mut out = s.push(bytes);
        out.extend(s.finish());
        out
    }
}

/// Scrubs a body while it streams.
pub fn scrub_stream(body: super::upstream::BodyStream, scrubber: Scrubber) -> super::upstream::BodyStream {
    use futures::StreamExt;
    Box::pin(futures::stream::unfold((body, Some(scrubber)), |(mut body, mut scrubber)| async move {
        let active = scrubber.as_mut()?;
        match body.next().await {
            Some(Ok(chunk)) => {
                let clean = Bytes::from(active.push(&chunk));
                Some((Ok(clean), (body, scrubber)))
            }
            Some(Err(e)) => Some((Err(e), (body, None))),
            None => {
                let tail = Bytes::from(scrubber.take()?.finish());
                Some((Ok(tail), (body, None)))
            }
        }
    }))
}

/// Removes every occurrence of the secret from a response's headers and body, in
/// case an upstream echoes what it received.
pub fn scrub(secret: &UsableSecret, headers: &mut HeaderMap, body: Bytes) -> Bytes {
    scrub_headers(secret, headers);
    Bytes::from(Scrubber::all(secret, &body))
}

pub fn scrub_headers(secret: &UsableSecret, headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let cleaned: Vec<Vec<u8>> = values.iter().map(|v| Scrubber::all(secret, v.as_bytes())).collect();
        if cleaned.iter().zip(&values).all(|(c, v)| c.as_slice() == v.as_bytes()) {
            continue;
        }
        headers.remove(&name);
        for c in cleaned {
            if let Ok(v) = HeaderValue::from_bytes(&c) {
                headers.append(name.clone(), v);
            }
        }
    }
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

    #[test]
    fn streaming_scrub_catches_secrets_split_across_chunks() {
        let s = secret("sk-ABCDEF", Injection::QueryParam { query_param: "k".into() });
        let text = b"start sk-ABCDEF mid sk-ABCsk-ABCDEF end sk-ABC";
        let whole = Scrubber::all(&s, text);
        assert_eq!(whole, b"start [REDACTED] mid sk-ABC[REDACTED] end sk-ABC".to_vec());
        // Every way of cutting the stream into two or three chunks gives the same result.
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let mut sc = Scrubber::new(&s);
                let mut out = sc.push(&text[..a]);
                out.extend(sc.push(&text[a..b]));
                out.extend(sc.push(&text[b..]));
                out.extend(sc.finish());
                assert_eq!(out, whole, "cut at {a}/{b}");
            }
        }
    }

    #[test]
    fn a_secret_inside_the_marker_is_not_scrubbed_twice() {
        let s = secret("RED", Injection::QueryParam { query_param: "k".into() });
        assert_eq!(Scrubber::all(&s, b"RED RED"), b"[REDACTED] [REDACTED]".to_vec());
    }
}
