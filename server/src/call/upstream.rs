//! What an upstream answered, or why it did not: plain data the pipeline, the
//! scrubber and the HTTP layer pass between them (the client that produces it is
//! `proxy::upstream`).

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::HeaderMap;

pub type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// An answer whose body is still arriving.
pub struct StreamingResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

impl StreamingResponse {
    /// Reads the rest of the body: the whole answer (execute mode).
    pub async fn read_whole(self) -> Result<UpstreamResponse, UpstreamError> {
        let StreamingResponse { status, headers, body: mut stream } = self;
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(UpstreamResponse { status, headers, body: body.freeze() })
    }
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse").field("status", &self.status).finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The egress guard refused a hop (a redirect or a name resolved at connect time).
    Egress(String),
    Timeout,
    TooLarge(usize),
    Unreachable(String),
    /// A call with an injected secret was answered in an encoding the scrubber cannot
    /// read (AEGIS asked for `identity`): refused rather than passed on unscrubbed.
    Encoded(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::Egress(r) => r.clone(),
            UpstreamError::Timeout => "upstream timed out".into(),
            UpstreamError::TooLarge(max) => format!("upstream response larger than {max} bytes"),
            UpstreamError::Unreachable(r) => format!("upstream unreachable: {r}"),
            UpstreamError::Encoded(e) => {
                format!(
                    "upstream answered with content-encoding {e:?}, which cannot be checked for the secret"
                )
            }
        }
    }
}
