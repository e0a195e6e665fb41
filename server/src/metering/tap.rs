//! Reads `usage` from an answer as it passes to the agent, without holding it back:
//! a stream's events are read as they arrive (and each reaches the agent as soon as
//! it is complete, or at once when nothing needs hiding); a whole JSON answer is
//! copied aside, up to a bound, and read when it ends. When the answer ends — or
//! breaks off, or the agent goes away and the body is dropped — the tap reports
//! what it read, exactly once ([`Reading`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use app::model::PricingProvider;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::Value;
use tokio::sync::oneshot;

use super::bill::Reading;
use super::usage::Reader;
use crate::call::upstream::{BodyStream, UpstreamError};

/// A whole (non-stream) answer longer than this is not read for usage (the call
/// then settles at its ceiling); the answer itself still passes.
pub const MAX_WHOLE: usize = 16 << 20;
/// A stream event longer than this is passed on unread.
pub const MAX_EVENT: usize = 1 << 20;

/// How to read an answer.
#[derive(Debug, Clone, Copy)]
pub struct TapSpec {
    pub provider: PricingProvider,
    /// `text/event-stream`: read event by event.
    pub sse: bool,
    /// Drop the usage-only chunk (OpenAI: `choices: []` with `usage`) AEGIS asked for.
    pub hide_usage_chunk: bool,
}

impl TapSpec {
    /// Whether an answer with these headers is a stream.
    pub fn is_sse(headers: &http::HeaderMap) -> bool {
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
    }
}

struct Tap {
    inner: BodyStream,
    spec: TapSpec,
    reader: Reader,
    /// Stream bytes not yet split into events.
    pending: BytesMut,
    /// A whole answer's copy.
    whole: BytesMut,
    overflow: bool,
    report: Option<oneshot::Sender<Reading>>,
    ended: bool,
}

/// Wraps `body`; the receiver gets the reading once the body ends, fails or is dropped.
pub fn tap(body: BodyStream, spec: TapSpec) -> (BodyStream, oneshot::Receiver<Reading>) {
    let (tx, rx) = oneshot::channel();
    let tap = Tap {
        inner: body,
        spec,
        reader: Reader::default(),
        pending: BytesMut::new(),
        whole: BytesMut::new(),
        overflow: false,
        report: Some(tx),
        ended: false,
    };
    (Box::pin(tap), rx)
}

/// The end of the first complete event in `buf` (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(at) = memchr(b'\n', &buf[i..]) {
        let n = i + at;
        match buf.get(n + 1) {
            Some(b'\n') => return Some(n + 2),
            Some(b'\r') if buf.get(n + 2) == Some(&b'\n') => return Some(n + 3),
            _ => i = n + 1,
        }
    }
    None
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

/// The JSON of an event's `data:` lines, if it has any that parse.
fn event_data(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    let data = data.trim();
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    serde_json::from_str(data).ok()
}

impl Tap {
    /// Reads one complete event; whether to pass it on.
    fn event(&mut self, event: &[u8]) -> bool {
        let Some(doc) = event_data(event) else { return true };
        let carried = self.reader.document(self.spec.provider, &doc);
        let usage_only = doc.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty);
        !(self.spec.hide_usage_chunk && carried && usage_only)
    }

    /// Takes a chunk; returns what passes to the agent now.
    fn feed(&mut self, chunk: Bytes) -> Bytes {
        if !self.spec.sse {
            if !self.overflow {
                if self.whole.len() + chunk.len() > MAX_WHOLE {
                    self.overflow = true;
                    self.whole = BytesMut::new();
                } else {
                    self.whole.extend_from_slice(&chunk);
                }
            }
            return chunk;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if self.event(&event) {
                out.extend_from_slice(&event);
            }
        }
        if self.pending.len() > MAX_EVENT {
            self.reader
                .malformed
                .get_or_insert_with(|| format!("a stream event longer than {MAX_EVENT} bytes"));
            out.extend_from_slice(&self.pending.split());
        }
        if self.spec.hide_usage_chunk {
            out.freeze()
        } else {
            // Nothing to hide: the chunk passes as it came; the events were only read.
            chunk
        }
    }

    /// The answer ended: reads what is left; returns what still passes.
    fn finish(&mut self) -> Bytes {
        let mut out = Bytes::new();
        if self.spec.sse {
            let rest = self.pending.split();
            if !rest.is_empty() && self.event(&rest) && self.spec.hide_usage_chunk {
                out = rest.freeze();
            }
        } else if self.overflow {
            self.reader.malformed.get_or_insert_with(|| format!("an answer longer than {MAX_WHOLE} bytes"));
        } else if let Ok(doc) = serde_json::from_slice::<Value>(&self.whole) {
            self.reader.document(self.spec.provider, &doc);
        }
        self.send(None);
        out
    }

    fn send(&mut self, cut: Option<String>) {
        if let Some(tx) = self.report.take() {
            let reader = std::mem::take(&mut self.reader);
            let _ = tx.send(Reading { usage: reader.usage, malformed: reader.malformed, cut });
        }
    }
}

impl Stream for Tap {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.feed(chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.send(Some(format!("the answer broke off: {}", e.reason())));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let rest = this.finish();
                    return Poll::Ready((!rest.is_empty()).then_some(Ok(rest)));
                }
            }
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.send(Some("the agent went away before the answer ended".into()));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::metering::usage::Usage;

    fn body(pieces: &[&str]) -> BodyStream {
        let items: Vec<Result<Bytes, UpstreamError>> =
            pieces.iter().map(|p| Ok(Bytes::copy_from_slice(p.as_bytes()))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn run(pieces: &[&str], spec: TapSpec) -> (String, Reading) {
        let (mut s, rx) = tap(body(pieces), spec);
        let mut out = String::new();
        while let Some(c) = s.next().await {
            out.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
        }
        (out, rx.await.unwrap())
    }

    const OPENAI_SSE: TapSpec =
        TapSpec { provider: PricingProvider::Openai, sse: true, hide_usage_chunk: true };

    #[tokio::test]
    async fn the_usage_chunk_aegis_asked_for_is_read_and_hidden_even_split_across_reads() {
        let stream = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,",
            "\"completion_tokens\":2}}\r\n\r\ndata: [DONE]\n\n",
        ];
        let (out, reading) = run(&stream, OPENAI_SSE).await;
        assert_eq!(
            out,
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(reading.usage, Some(Usage { input: 5, output: 2, ..Default::default() }));
        assert_eq!((reading.malformed, reading.cut), (None, None));
        let shown = TapSpec { hide_usage_chunk: false, ..OPENAI_SSE };
        let (out, reading) = run(&stream, shown).await;
        assert_eq!(out, stream.concat(), "an agent that asked sees every byte");
        assert!(reading.usage.is_some());
    }

    #[tokio::test]
    async fn a_whole_answer_is_read_when_it_ends_and_passes_unchanged() {
        let spec = TapSpec { provider: PricingProvider::Anthropic, sse: false, hide_usage_chunk: false };
        let pieces = ["{\"usage\":{\"input_tokens\":3,", "\"output_tokens\":4}}"];
        let (out, reading) = run(&pieces, spec).await;
        assert_eq!(out, pieces.concat());
        assert_eq!(reading.usage, Some(Usage { input: 3, output: 4, ..Default::default() }));
        let (_, none) = run(&["not json"], spec).await;
        assert_eq!(none.usage, None);
    }

    #[tokio::test]
    async fn a_dropped_or_broken_answer_reports_the_cut() {
        let (s, rx) = tap(body(&["data: {\"choices\":[]}\n\n"]), OPENAI_SSE);
        drop(s);
        assert!(rx.await.unwrap().cut.unwrap().contains("went away"));
        let items: Vec<Result<Bytes, UpstreamError>> =
            vec![Ok(Bytes::from_static(b"{")), Err(UpstreamError::Timeout)];
        let (mut s, rx) = tap(Box::pin(futures::stream::iter(items)), OPENAI_SSE);
        while s.next().await.is_some() {}
        assert!(rx.await.unwrap().cut.unwrap().contains("timed out"));
    }

    #[tokio::test]
    async fn a_last_event_without_its_blank_line_is_still_read() {
        let spec = TapSpec { provider: PricingProvider::Anthropic, sse: true, hide_usage_chunk: false };
        let (_, r) = run(
            &["event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}"],
            spec,
        )
        .await;
        assert_eq!(r.usage.unwrap().output, 9);
    }

    #[test]
    fn only_event_streams_are_read_as_events() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        assert!(TapSpec::is_sse(&h));
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        assert!(!TapSpec::is_sse(&h));
    }
}
