//! The provider's own account of a call (`usage`), read from a whole JSON answer or
//! from a stream's events as they pass.
//!
//! - OpenAI: `usage.prompt_tokens` / `input_tokens` (all input, cached included),
//!   `completion_tokens` / `output_tokens`, `prompt_tokens_details.cached_tokens` /
//!   `input_tokens_details.cached_tokens`; a Responses stream carries it in
//!   `response.completed`'s `response.usage`, a chat stream in its last chunk.
//! - Anthropic: `usage.input_tokens` (uncached input only), `output_tokens`,
//!   `cache_read_input_tokens`, `cache_creation_input_tokens`; a stream carries the
//!   input side in `message_start`'s `message.usage` and the output so far in each
//!   `message_delta`'s `usage` (a running total: the last one counts).

use app::model::PricingProvider;
use serde_json::Value;

/// Tokens of one call, as billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens at the input price (not cached, not cache writes).
    pub input: i64,
    pub cached_input: i64,
    pub cache_write: i64,
    pub output: i64,
}

/// A field that must be a whole, non-negative number of tokens when present.
fn count(usage: &Value, path: &str) -> Result<Option<i64>, String> {
    match usage.pointer(path) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(format!("usage{path} is not a whole number of tokens")),
        },
    }
}

fn first(usage: &Value, paths: &[&str]) -> Result<Option<i64>, String> {
    for p in paths {
        if let Some(n) = count(usage, p)? {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// An OpenAI `usage` object. `Err` when it is there but not readable.
pub fn openai(usage: &Value) -> Result<Usage, String> {
    if !usage.is_object() {
        return Err("usage is not an object".into());
    }
    let total_in = first(usage, &["/prompt_tokens", "/input_tokens"])?
        .ok_or("usage has no prompt_tokens or input_tokens")?;
    let output = first(usage, &["/completion_tokens", "/output_tokens"])?.unwrap_or(0);
    let cached =
        first(usage, &["/prompt_tokens_details/cached_tokens", "/input_tokens_details/cached_tokens"])?
            .unwrap_or(0);
    if cached > total_in {
        return Err("usage counts more cached tokens than input tokens".into());
    }
    Ok(Usage { input: total_in - cached, cached_input: cached, cache_write: 0, output })
}

/// Folds one Anthropic `usage` object into what is known so far: each field present
/// replaces the earlier value (stream totals are running totals).
pub fn anthropic_fold(known: &mut Usage, usage: &Value) -> Result<(), String> {
    if !usage.is_object() {
        return Err("usage is not an object".into());
    }
    if let Some(n) = count(usage, "/input_tokens")? {
        known.input = n;
    }
    if let Some(n) = count(usage, "/output_tokens")? {
        known.output = n;
    }
    if let Some(n) = count(usage, "/cache_read_input_tokens")? {
        known.cached_input = n;
    }
    if let Some(n) = count(usage, "/cache_creation_input_tokens")? {
        known.cache_write = n;
    }
    Ok(())
}

/// What the answer has said about usage so far, and whether it was readable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reader {
    pub usage: Option<Usage>,
    /// The first unreadable usage met; it wins over any usage.
    pub malformed: Option<String>,
}

impl Reader {
    fn record(&mut self, read: Result<Usage, String>) {
        match read {
            Ok(u) => self.usage = Some(u),
            Err(e) => {
                self.malformed.get_or_insert(e);
            }
        }
    }

    /// A whole JSON answer (or one stream event's data) from `provider`. Returns
    /// whether the document carried usage.
    pub fn document(&mut self, provider: PricingProvider, doc: &Value) -> bool {
        match provider {
            PricingProvider::Openai => {
                // A chat chunk or whole answer: `usage`; a Responses event: `response.usage`.
                let usage = match doc.get("usage") {
                    Some(u) if !u.is_null() => Some(u),
                    _ => doc.pointer("/response/usage").filter(|u| !u.is_null()),
                };
                match usage {
                    Some(u) => {
                        self.record(openai(u));
                        true
                    }
                    None => false,
                }
            }
            PricingProvider::Anthropic => {
                let usage = match doc.get("type").and_then(Value::as_str) {
                    Some("message_start") => doc.pointer("/message/usage"),
                    _ => doc.get("usage"),
                };
                match usage.filter(|u| !u.is_null()) {
                    Some(u) => {
                        let mut known = self.usage.unwrap_or_default();
                        let folded = anthropic_fold(&mut known, u).map(|()| known);
                        self.record(folded);
                        true
                    }
                    None => false,
                }
            }
            PricingProvider::Flat => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_input_includes_cached_tokens_and_both_spellings_read() {
        let chat = json!({"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 30}});
        assert_eq!(openai(&chat).unwrap(), Usage { input: 70, cached_input: 30, cache_write: 0, output: 20 });
        let responses =
            json!({"input_tokens": 9, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 0}});
        assert_eq!(openai(&responses).unwrap(), Usage { input: 9, output: 4, ..Default::default() });
        let embeddings = json!({"prompt_tokens": 8, "total_tokens": 8});
        assert_eq!(openai(&embeddings).unwrap(), Usage { input: 8, ..Default::default() });
    }

    #[test]
    fn unreadable_usage_is_an_error_never_zero() {
        assert!(openai(&json!({"prompt_tokens": 1, "completion_tokens": "lots"})).is_err());
        assert!(openai(&json!({"prompt_tokens": -1})).is_err());
        assert!(openai(&json!({"completion_tokens": 5})).is_err(), "no input count");
        assert!(openai(&json!({"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 2}})).is_err());
        assert!(openai(&json!(7)).is_err());
        let mut r = Reader::default();
        r.document(
            PricingProvider::Anthropic,
            &json!({"type": "message_delta", "usage": {"output_tokens": -5}}),
        );
        assert!(r.malformed.is_some());
    }

    #[test]
    fn an_anthropic_stream_folds_message_start_and_the_last_message_delta() {
        let mut r = Reader::default();
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 1,
                           "cache_read_input_tokens": 10, "cache_creation_input_tokens": 5}}});
        assert!(r.document(PricingProvider::Anthropic, &start));
        assert!(!r.document(
            PricingProvider::Anthropic,
            &json!({"type": "content_block_delta", "delta": {"text": "x"}})
        ));
        r.document(
            PricingProvider::Anthropic,
            &json!({"type": "message_delta", "usage": {"output_tokens": 7}}),
        );
        r.document(
            PricingProvider::Anthropic,
            &json!({"type": "message_delta", "usage": {"output_tokens": 12}}),
        );
        assert_eq!(r.usage, Some(Usage { input: 50, cached_input: 10, cache_write: 5, output: 12 }));
        assert_eq!(r.malformed, None);
    }

    #[test]
    fn openai_streams_carry_usage_in_the_last_chunk_or_response_completed() {
        let mut r = Reader::default();
        assert!(!r.document(PricingProvider::Openai, &json!({"choices": [{"delta": {}}], "usage": null})));
        assert!(r.document(
            PricingProvider::Openai,
            &json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        ));
        assert_eq!(r.usage.unwrap().output, 2);
        let mut r = Reader::default();
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}});
        assert!(r.document(PricingProvider::Openai, &done));
        assert_eq!(r.usage.unwrap(), Usage { input: 4, output: 6, ..Default::default() });
    }
}
