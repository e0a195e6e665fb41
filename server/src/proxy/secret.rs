//! Just-in-time secrets: put the real credential into the outgoing request at the
//! last moment, and make sure it never comes back out in the response.

use app::model::Injection;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::secrets::UsableSecret;
use crate::secrets::query::set_query_param;

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
        Injection::QueryParam { query_param } => set_query_param(url, query_param, &secret.value),
    }
    Ok(())
}

/// How far a match at some position got.
enum Match {
    /// The secret, in this many bytes of the text.
    Found(usize),
    /// The text ended while it still looked like the secret: wait for more.
    Partial,
    No,
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The secret written with any mix of raw bytes, `%XX` escapes (either hex case)
/// and `+` for a space: every percent- and form-encoding of it, whichever bytes
/// the encoder chose to escape.
fn percent_match(secret: &[u8], data: &[u8]) -> Match {
    let mut j = 0;
    for &want in secret {
        let Some(&b) = data.get(j) else { return Match::Partial };
        if b == b'%' {
            match (data.get(j + 1).map(|h| hex_value(*h)), data.get(j + 2).map(|h| hex_value(*h))) {
                (Some(Some(hi)), Some(Some(lo))) if (hi << 4 | lo) == want => {
                    j += 3;
                    continue;
                }
                (None, _) | (Some(Some(_)), None) if want != b'%' => return Match::Partial,
                _ => {}
            }
        }
        if b == want || (want == b' ' && b == b'+') {
            j += 1;
        } else {
            return Match::No;
        }
    }
    Match::Found(j)
}

/// The secret as the contents of a JSON string, with any mix of raw characters and
/// escapes (`\"`, `\\`, `\/`, `\uXXXX` in either hex case, surrogate pairs).
fn json_match(secret: &str, data: &[u8]) -> Match {
    let mut j = 0;
    for want in secret.chars() {
        let mut raw = [0u8; 4];
        let raw = want.encode_utf8(&mut raw).as_bytes();
        let Some(&b) = data.get(j) else { return Match::Partial };
        if b != b'\\' {
            match data.get(j..j + raw.len()) {
                Some(d) if d == raw => j += raw.len(),
                Some(_) => return Match::No,
                None if data[j..] == raw[..data.len() - j] => return Match::Partial,
                None => return Match::No,
            }
            continue;
        }
        let Some(&kind) = data.get(j + 1) else { return Match::Partial };
        let simple = match kind {
            b'"' | b'\\' | b'/' => Some(kind as char),
            b'b' => Some('\u{8}'),
            b'f' => Some('\u{c}'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            b'u' => None,
            _ => return Match::No,
        };
        if let Some(c) = simple {
            if c != want {
                return Match::No;
            }
            j += 2;
            continue;
        }
        let mut units = [0u16; 2];
        for unit in want.encode_utf16(&mut units) {
            // `\uXXXX`, one per UTF-16 unit.
            let Some(esc) = data.get(j..j + 6) else {
                let have = &data[j..];
                let expect = format!("\\u{unit:04x}");
                let fits = have.iter().zip(expect.bytes()).all(|(a, b)| a.eq_ignore_ascii_case(&b));
                return if fits { Match::Partial } else { Match::No };
            };
            let value =
                esc[2..].iter().try_fold(0u16, |acc, h| hex_value(*h).map(|d| acc << 4 | u16::from(d)));
            if esc[0] != b'\\' || esc[1] != b'u' || value != Some(*unit) {
                return Match::No;
            }
            j += 6;
        }
    }
    Match::Found(j)
}

/// Base64 forms of `value` (standard and URL-safe alphabets): the whole encoding
/// with and without padding, and, for each of the three alignments the value can
/// have inside a longer base64 text, the characters that depend on the value alone.
fn base64_forms(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = vec![STANDARD.encode(value).into_bytes(), URL_SAFE.encode(value).into_bytes()];
    for offset in 0..3usize {
        let mut data = vec![0u8; offset];
        data.extend_from_slice(value);
        // Character i holds bits 6i..6i+6 of the data: keep those inside the value.
        let (first, end) = ((8 * offset).div_ceil(6), 8 * (offset + value.len()) / 6);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let text = engine.encode(&data).into_bytes();
            // Short cores would match unrelated base64 text.
            if end > first && end - first >= 8 && end <= text.len() {
                out.push(text[first..end].to_vec());
            }
        }
    }
    let mut unique: Vec<Vec<u8>> = Vec::new();
    for form in out {
        if !unique.contains(&form) {
            unique.push(form);
        }
    }
    // Longest first, so a whole encoding is replaced whole rather than a core inside it.
    unique.sort_by_key(|f| std::cmp::Reverse(f.len()));
    unique
}

/// Replaces every occurrence of the secret in a byte stream, chunk by chunk, so a
/// response can be scrubbed while it streams. Bytes that could be the start of a
/// secret split across chunks are held back until the next chunk decides.
///
/// It recognises the value raw, percent- or form-encoded (any bytes escaped, either
/// hex case), JSON-escaped (any characters escaped) and base64-encoded (standard and
/// URL-safe alphabets, alone or at any alignment inside a longer base64 text).
pub struct Scrubber {
    value: zeroize::Zeroizing<String>,
    base64: Vec<zeroize::Zeroizing<Vec<u8>>>,
    /// Bytes a match can start with.
    starts: [bool; 256],
    /// The longest text a match can span.
    longest: usize,
    carry: Vec<u8>,
}

impl Scrubber {
    pub fn new(secret: &UsableSecret) -> Self {
        let value = zeroize::Zeroizing::new(secret.value.to_string());
        let base64: Vec<zeroize::Zeroizing<Vec<u8>>> =
            base64_forms(value.as_bytes()).into_iter().map(zeroize::Zeroizing::new).collect();
        let mut starts = [false; 256];
        if let Some(&first) = value.as_bytes().first() {
            starts[usize::from(first)] = true;
            starts[usize::from(b'%')] = true;
            starts[usize::from(b'\\')] = true;
            if first == b' ' {
                starts[usize::from(b'+')] = true;
            }
        }
        for form in &base64 {
            starts[usize::from(form[0])] = true;
        }
        // A character is at most 12 bytes as JSON escapes (a surrogate pair) and a
        // byte 3 as a percent escape.
        let longest = (value.chars().count() * 12)
            .max(value.len() * 3)
            .max(base64.iter().map(|f| f.len()).max().unwrap_or(0));
        Self { value, base64, starts, longest, carry: Vec::new() }
    }

    /// The longest match at the start of `rest`, or whether one may still be coming.
    fn match_at(&self, rest: &[u8]) -> Match {
        if self.value.is_empty() {
            return Match::No;
        }
        let mut partial = false;
        let mut best = 0;
        for found in [percent_match(self.value.as_bytes(), rest), json_match(&self.value, rest)] {
            match found {
                Match::Found(n) => best = best.max(n),
                Match::Partial => partial = true,
                Match::No => {}
            }
        }
        for form in &self.base64 {
            if rest.starts_with(form) {
                best = best.max(form.len());
                break;
            }
            if rest.len() < form.len() && form.starts_with(rest) {
                partial = true;
            }
        }
        match (best, partial) {
            (0, true) => Match::Partial,
            (0, false) => Match::No,
            (n, _) => Match::Found(n),
        }
    }

    fn scan(&mut self, data: Vec<u8>, last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if !self.starts[usize::from(data[i])] {
                out.push(data[i]);
                i += 1;
                continue;
            }
            match self.match_at(&data[i..]) {
                Match::Found(n) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += n;
                    continue;
                }
                // Near the end, a partial match must wait for the next chunk.
                Match::Partial if !last && data.len() - i < self.longest => {
                    self.carry = data[i..].to_vec();
                    return out;
                }
                _ => {}
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

/// Removes every occurrence of the secret from a response's headers, in case an
/// upstream echoes what it received (the body goes through [`scrub_stream`]).
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
        UsableSecret { name: "s".into(), value: Zeroizing::new(value.into()), inject, allowed: vec![] }
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
        scrub_headers(&s, &mut headers);
        let body = Scrubber::all(&s, b"a sk live/1 b sk+live%2F1 c");
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

    /// `%2F` → `%2f`, leaving every other character as it is.
    fn pct_lower_hex(text: &str) -> String {
        let mut out = String::new();
        let mut hex = 0;
        for c in text.chars() {
            if c == '%' {
                hex = 2;
                out.push(c);
            } else if hex > 0 {
                hex -= 1;
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn every_encoding_of_the_secret_is_scrubbed() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let value = "sk/live+\"q\\é=1&2 ~x-ABCDEFGH";
        let s = secret(value, Injection::QueryParam { query_param: "k".into() });
        let pct_upper: String = value
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let pct_lower = pct_lower_hex(&pct_upper);
        let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let json_min = serde_json::to_string(value).unwrap();
        let json_ascii = "sk\\/live+\\\"q\\\\\\u00e9=1&2 ~x-ABCDEFGH";
        let mut forms = vec![
            value.to_owned(),
            pct_upper.clone(),
            pct_lower,
            form.clone(),
            pct_lower_hex(&form),
            json_min.trim_matches('"').to_owned(),
            json_ascii.to_owned(),
            json_ascii.replace("u00e9", "u00E9"),
            STANDARD.encode(value),
            URL_SAFE.encode(value),
            STANDARD_NO_PAD.encode(value),
            URL_SAFE_NO_PAD.encode(value),
        ];
        // Inside longer base64 texts, at each of the three alignments.
        for prefix in ["", "u", "us", "user:"] {
            let whole = format!("{prefix}{value}!");
            forms.push(STANDARD.encode(&whole));
            forms.push(URL_SAFE_NO_PAD.encode(&whole));
        }
        for form in &forms {
            let text = format!("before {form} after");
            let out = String::from_utf8(Scrubber::all(&s, text.as_bytes())).unwrap();
            assert!(out.contains(REDACTED), "{form} not scrubbed: {out}");
            // Nothing long enough to identify the secret is left.
            assert!(!out.contains("ABCDEFGH") && !out.contains("QUJDREVGR0"), "{form}: {out}");
            for b64 in [STANDARD.encode(value), URL_SAFE_NO_PAD.encode(value)] {
                assert!(!out.contains(&b64[4..16]), "{form}: {out}");
            }
        }
        // Text that merely resembles it is left alone.
        let benign = "sk/live and ABCDEFG and %2F and c2svbGl2";
        assert_eq!(Scrubber::all(&s, benign.as_bytes()), benign.as_bytes());
        // Split at every point, a percent-encoded form in mixed case is still caught.
        let mixed = pct_upper.replacen("%2F", "%2f", 1);
        let text = format!("x{mixed}y");
        for cut in 0..=text.len() {
            let mut sc = Scrubber::new(&s);
            let mut out = sc.push(&text.as_bytes()[..cut]);
            out.extend(sc.push(&text.as_bytes()[cut..]));
            out.extend(sc.finish());
            assert_eq!(out, b"x[REDACTED]y".to_vec(), "cut at {cut}");
        }
    }

    #[test]
    fn a_secret_inside_the_marker_is_not_scrubbed_twice() {
        let s = secret("RED", Injection::QueryParam { query_param: "k".into() });
        assert_eq!(Scrubber::all(&s, b"RED RED"), b"[REDACTED] [REDACTED]".to_vec());
    }
}
