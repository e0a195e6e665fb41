//! What an LLM request asks for, read from its body before it leaves AEGIS: the
//! model (checked against the connection's allow-list), the output it may produce
//! (capped, and written into the forwarded request so the cap holds), whether it
//! streams, and the ceiling held for it.
//!
//! The ceiling bounds the prompt by the body's size in bytes: every token of the
//! byte-level BPE tokenizers OpenAI and Anthropic use is at least one byte of text,
//! and the JSON around the text (keys, quotes, roles) is more bytes than the few
//! tokens a chat template adds, so `bytes ≥ prompt tokens`. It is conservative
//! (English text is ~4 bytes a token): the hold is released down to the real cost
//! when the answer's `usage` arrives.

use app::model::PricingProvider;
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::prices::{PriceBook, Priced};

/// Which endpoint a request is, by the end of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OpenAI `…/chat/completions`.
    Chat,
    /// OpenAI `…/completions` (legacy).
    Completions,
    /// OpenAI `…/responses`.
    Responses,
    /// OpenAI `…/embeddings`: input only.
    Embeddings,
    /// Anthropic `…/messages`.
    Messages,
}

impl Endpoint {
    fn of(provider: PricingProvider, path: &str) -> Option<Endpoint> {
        let path = path.trim_end_matches('/');
        match provider {
            PricingProvider::Openai if path.ends_with("/chat/completions") => Some(Endpoint::Chat),
            PricingProvider::Openai if path.ends_with("/completions") => Some(Endpoint::Completions),
            PricingProvider::Openai if path.ends_with("/responses") => Some(Endpoint::Responses),
            PricingProvider::Openai if path.ends_with("/embeddings") => Some(Endpoint::Embeddings),
            PricingProvider::Anthropic if path.ends_with("/messages") => Some(Endpoint::Messages),
            _ => None,
        }
    }

    /// The request field that bounds the output, as this endpoint names it (chat
    /// completions accept two; `max_completion_tokens` is the current one).
    fn output_fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
            Endpoint::Completions | Endpoint::Messages => &["max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
            Endpoint::Embeddings => &[],
        }
    }

    /// Whether a stream reports usage only when asked (`stream_options.include_usage`).
    fn usage_on_request(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }
}

/// A metered request: what the pipeline holds, forwards and settles by.
#[derive(Debug, Clone)]
pub struct LlmCall {
    pub provider: PricingProvider,
    pub endpoint: Endpoint,
    pub model: String,
    pub priced: Priced,
    /// The output tokens the call may produce (after the cap), per choice.
    pub max_tokens: i64,
    /// Choices asked for (`n`; the output bound multiplies by it).
    pub choices: i64,
    pub stream: bool,
    /// AEGIS asked for the stream's usage chunk the agent did not: hide it.
    pub hide_usage_chunk: bool,
    /// The held ceiling, micro-units.
    pub ceiling_micros: i64,
    /// The prompt bound the ceiling used (the body's bytes).
    pub input_bound: i64,
    /// The body to forward when AEGIS changed it (cap, usage option).
    pub forward_body: Option<Bytes>,
}

impl LlmCall {
    /// `input.llm` in the policy input.
    pub fn policy_input(&self) -> Value {
        json!({"provider": self.provider.as_str(), "model": self.model, "max_tokens": self.max_tokens,
               "stream": self.stream})
    }
}

/// Why a request under a priced connection is refused before it leaves AEGIS.
pub type Refusal = String;

fn whole_tokens(v: &Value, field: &str) -> Result<Option<i64>, Refusal> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(format!("{field} must be a whole number of tokens")),
        },
    }
}

/// Reads and plans a request to a priced connection. `Ok(None)`: not a generation
/// (a `GET`, `HEAD`, `OPTIONS` or `DELETE`: listing models, fetching a file), charged
/// as a flat call. A request that would generate and that AEGIS cannot bound is
/// refused: an endpoint it does not know, a body without a model, a model the
/// table does not allow, no output bound at all.
pub fn plan(book: &PriceBook, method: &Method, path: &str, body: &Bytes) -> Result<Option<LlmCall>, Refusal> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE) {
        return Ok(None);
    }
    let provider = book.provider;
    let endpoint = Endpoint::of(provider, path).ok_or_else(|| {
        format!("AEGIS cannot meter {method} {path} on a priced {} connection", provider.as_str())
    })?;
    let mut doc: Value =
        serde_json::from_slice(body).map_err(|_| "the request body is not JSON".to_owned())?;
    if !doc.is_object() {
        return Err("the request body is not a JSON object".into());
    }
    let model = match doc.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err("the request names no model".into()),
    };
    let priced =
        book.price(&model).ok_or_else(|| format!("model {model:?} is not allowed on this connection"))?;
    let stream = match doc.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("stream must be true or false".into()),
    };
    let choices = match whole_tokens(&doc, "n")? {
        None => 1,
        Some(n) if (1..=128).contains(&n) => n,
        Some(_) => return Err("n must be between 1 and 128".into()),
    };
    let choices = match whole_tokens(&doc, "best_of")? {
        Some(b) if endpoint == Endpoint::Completions && b > choices => b.min(128),
        _ => choices,
    };
    let mut changed = false;
    let fields = endpoint.output_fields();
    let max_tokens = if fields.is_empty() {
        0
    } else {
        let asked = fields.iter().map(|f| whole_tokens(&doc, f)).collect::<Result<Vec<_>, _>>()?;
        let asked = asked.into_iter().flatten().max();
        let cap = match (book.max_output_tokens, priced.price.max_output_tokens.filter(|m| *m > 0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let bound = match (asked, cap) {
            (Some(a), Some(c)) => a.min(c),
            (Some(a), None) => a,
            (None, Some(c)) => c,
            (None, None) => {
                return Err(format!(
                    "the request sets no {} and the connection has no max_output_tokens",
                    fields[0]
                ));
            }
        };
        if asked != Some(bound) {
            // Written where the agent wrote it, else in the endpoint's current field.
            let field =
                fields.iter().find(|f| doc.get(**f).is_some_and(|v| !v.is_null())).unwrap_or(&fields[0]);
            for f in fields {
                if doc.get(*f).is_some_and(|v| !v.is_null()) {
                    doc[*f] = json!(bound);
                }
            }
            doc[*field] = json!(bound);
            changed = true;
        }
        bound
    };
    let mut hide_usage_chunk = false;
    if stream && endpoint.usage_on_request() {
        let asked = doc.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        if !asked {
            match doc.get_mut("stream_options") {
                Some(Value::Object(o)) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                _ => doc["stream_options"] = json!({"include_usage": true}),
            }
            hide_usage_chunk = true;
            changed = true;
        }
    }
    let forward_body =
        changed.then(|| Bytes::from(serde_json::to_vec(&doc).expect("a JSON value serialises")));
    let input_bound = forward_body.as_ref().unwrap_or(body).len() as i64;
    let price = priced.price;
    let output_bound = max_tokens.saturating_mul(choices);
    let ceiling_micros = super::bill::micros(
        i128::from(input_bound) * i128::from(price.dearest_input(provider))
            + i128::from(output_bound) * i128::from(price.output),
    );
    Ok(Some(LlmCall {
        provider,
        endpoint,
        model,
        priced,
        max_tokens,
        choices,
        stream,
        hide_usage_chunk,
        ceiling_micros,
        input_bound,
        forward_body,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use app::model::{ModelPrice, Pricing};

    use super::*;
    use crate::metering::prices::resolve;

    fn book(provider: PricingProvider, max_output: Option<i64>) -> PriceBook {
        let models = BTreeMap::from([(
            "m".to_owned(),
            ModelPrice {
                input_per_mtok_micros: Some(1_000_000),
                output_per_mtok_micros: Some(2_000_000),
                ..Default::default()
            },
        )]);
        let p = resolve(Pricing {
            provider,
            models: Some(models),
            max_output_tokens: max_output,
            fallback: None,
        })
        .unwrap();
        PriceBook::from_saved(&serde_json::to_string(&p).unwrap()).unwrap().unwrap()
    }

    fn body(v: Value) -> Bytes {
        Bytes::from(serde_json::to_vec(&v).unwrap())
    }

    fn forwarded(call: &LlmCall) -> Value {
        serde_json::from_slice(call.forward_body.as_ref().expect("rewritten")).unwrap()
    }

    #[test]
    fn the_ceiling_is_body_bytes_at_input_price_plus_the_output_bound() {
        let b = body(json!({"model": "m", "max_tokens": 10, "messages": []}));
        let call = plan(&book(PricingProvider::Anthropic, None), &Method::POST, "/v1/messages", &b)
            .unwrap()
            .unwrap();
        assert_eq!(call.forward_body, None, "nothing to change");
        assert_eq!(call.input_bound, b.len() as i64);
        // 1 micro-unit a token in, 2 out: bytes + 20.
        assert_eq!(call.ceiling_micros, b.len() as i64 + 20);
        assert_eq!((call.max_tokens, call.stream, call.endpoint), (10, false, Endpoint::Messages));
    }

    #[test]
    fn the_cap_is_written_into_the_request_that_asks_more_or_nothing() {
        let openai = book(PricingProvider::Openai, Some(100));
        let over = body(json!({"model": "m", "max_tokens": 5000, "messages": []}));
        let call = plan(&openai, &Method::POST, "/v1/chat/completions", &over).unwrap().unwrap();
        assert_eq!((call.max_tokens, forwarded(&call)["max_tokens"].clone()), (100, json!(100)));
        let silent = body(json!({"model": "m", "messages": []}));
        let call = plan(&openai, &Method::POST, "/v1/chat/completions", &silent).unwrap().unwrap();
        assert_eq!(forwarded(&call)["max_completion_tokens"], 100, "the current field");
        let responses = plan(&openai, &Method::POST, "/v1/responses", &silent).unwrap().unwrap();
        assert_eq!(forwarded(&responses)["max_output_tokens"], 100);
        let under = body(json!({"model": "m", "max_completion_tokens": 7, "messages": []}));
        assert_eq!(
            plan(&openai, &Method::POST, "/v1/chat/completions", &under).unwrap().unwrap().forward_body,
            None
        );
        let e = plan(&book(PricingProvider::Openai, None), &Method::POST, "/v1/chat/completions", &silent)
            .unwrap_err();
        assert!(e.contains("max_completion_tokens"), "{e}");
    }

    #[test]
    fn choices_multiply_the_output_bound() {
        let b = body(json!({"model": "m", "max_tokens": 10, "n": 3, "messages": []}));
        let call = plan(&book(PricingProvider::Openai, None), &Method::POST, "/v1/chat/completions", &b)
            .unwrap()
            .unwrap();
        assert_eq!(call.ceiling_micros, b.len() as i64 + 3 * 10 * 2);
        let bad = body(json!({"model": "m", "max_tokens": 10, "n": 0}));
        assert!(
            plan(&book(PricingProvider::Openai, None), &Method::POST, "/v1/chat/completions", &bad).is_err()
        );
    }

    #[test]
    fn a_stream_gets_the_usage_chunk_and_hides_it_only_when_the_agent_did_not_ask() {
        let openai = book(PricingProvider::Openai, Some(10));
        let b = body(json!({"model": "m", "stream": true, "max_tokens": 5, "messages": []}));
        let call = plan(&openai, &Method::POST, "/v1/chat/completions", &b).unwrap().unwrap();
        assert!(call.hide_usage_chunk && call.stream);
        assert_eq!(forwarded(&call)["stream_options"], json!({"include_usage": true}));
        let asked = body(
            json!({"model": "m", "stream": true, "max_tokens": 5, "stream_options": {"include_usage": true}}),
        );
        let call = plan(&openai, &Method::POST, "/v1/chat/completions", &asked).unwrap().unwrap();
        assert!(!call.hide_usage_chunk && call.forward_body.is_none());
        let responses = plan(&openai, &Method::POST, "/v1/responses", &b).unwrap();
        assert!(!responses.unwrap().hide_usage_chunk, "responses streams always carry usage");
    }

    #[test]
    fn what_cannot_be_bounded_is_refused_and_reads_are_flat() {
        let openai = book(PricingProvider::Openai, Some(10));
        let chat = "/v1/chat/completions";
        let refused = |b: &[u8], path: &str| {
            plan(&openai, &Method::POST, path, &Bytes::copy_from_slice(b)).unwrap_err()
        };
        assert!(refused(b"{\"model\":\"other\"}", chat).contains("not allowed"));
        assert!(refused(b"{\"messages\":[]}", chat).contains("no model"));
        assert!(refused(b"not json", chat).contains("not JSON"));
        assert!(refused(b"[1]", chat).contains("object"));
        assert!(refused(b"{\"model\":\"m\",\"max_tokens\":-1}", chat).contains("whole number"));
        assert!(refused(b"{\"model\":\"m\",\"stream\":\"yes\"}", chat).contains("stream"));
        assert!(refused(b"{\"model\":\"m\"}", "/v1/images/generations").contains("cannot meter"));
        assert!(plan(&openai, &Method::GET, "/v1/models", &Bytes::new()).unwrap().is_none());
        let embeddings =
            plan(&openai, &Method::POST, "/v1/embeddings", &body(json!({"model": "m", "input": "x"})));
        assert_eq!(embeddings.unwrap().unwrap().max_tokens, 0, "input only");
    }
}
