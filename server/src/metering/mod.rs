//! Metered cost: what an LLM call costs, measured from the provider's answer instead
//! of taken from the agent (issue #19).
//!
//! A sponsor prices a connection (`pricing` on `/api/connections`). From then on every
//! call whose target lies under that connection's base URL — through gateway mode
//! **or** `POST /api/proxy/execute`, so switching doors dodges nothing — is metered:
//!
//! 1. **Before** ([`request::plan`], stage `meter`): the request's model must be in the
//!    connection's table (else denied at stage `policy`, nothing sent); its output is
//!    capped (the cap written into the forwarded request); a ceiling — the body's
//!    bytes as prompt tokens at the dearest input price, plus the output bound at the
//!    output price — is held on the wallet at stage `budget`. `input.llm` tells the
//!    policy what is asked.
//! 2. **During** ([`tap`]): the answer passes to the agent as it arrives; its `usage`
//!    is read on the way (a stream's usage chunk is asked for when the agent did not,
//!    and then hidden from it).
//! 3. **After** ([`bill`]): when the answer has ended, the hold is settled at the cost
//!    of the usage read — or at the ceiling when it could not be read — and the
//!    outcome record says which, with the tokens, model and prices.
//!
//! Where a call's target matches ([`route_for`]): the sponsor's connection whose base
//! URL has the same scheme, host and port and whose path is a prefix of the
//! target's, compared segment by segment after percent-decoding (so `%76%31` is
//! `v1`); the longest such base wins, priced or not, so a sponsor can carve a flat
//! connection out of a priced one. Hosts are compared as written: a provider reached
//! by another name or address is another host (a policy can refuse those).

pub mod bill;
pub mod prices;
pub mod request;
pub mod tap;
pub mod usage;

pub use bill::{Bill, Reading};

use crate::call::request::normalised_host;
pub use request::LlmCall;

pub use crate::store::Route;

/// A call being metered: where it matched, what it asks, and (once the upstream
/// answered) where the answer's reading will arrive.
#[derive(Debug)]
pub struct Metered {
    pub connection: String,
    pub llm: LlmCall,
    pub reading: Option<tokio::sync::oneshot::Receiver<Reading>>,
}

/// What metering makes of one call: the least it costs (its connection's per-call
/// price), and the plan when it is metered.
#[derive(Debug, Default)]
pub struct Assessment {
    /// The connection the target lies under, if any.
    pub connection: Option<String>,
    pub least_micros: i64,
    pub llm: Option<LlmCall>,
    /// The connection's saved rate limits.
    pub rate_limits: Option<String>,
}

impl Assessment {
    /// The stage's note for the decision record.
    pub fn note(&self) -> String {
        match (&self.connection, &self.llm) {
            (None, _) => "no connection".into(),
            (Some(c), None) => format!("flat: connection {c}"),
            (Some(c), Some(llm)) => {
                format!("{} {} on {c}: ceiling {}", llm.provider.as_str(), llm.model, llm.ceiling_micros)
            }
        }
    }
}

/// Assesses a call to `target` against the sponsor's `routes`: `Err` is why it
/// cannot be priced (the caller denies it before anything leaves AEGIS).
pub fn assess(
    routes: &[Route],
    method: &http::Method,
    body: &bytes::Bytes,
    target: &url::Url,
) -> Result<Assessment, request::Refusal> {
    let Some(route) = route_for(routes, target) else {
        return Ok(Assessment::default());
    };
    let mut assessment = Assessment {
        connection: Some(route.name.clone()),
        // An MCP connection's price is per tool call: the MCP call itself carries it
        // (`mcp::request_for`), so listing a server's tools costs nothing.
        least_micros: if route.mcp { 0 } else { route.cost_micros },
        llm: None,
        rate_limits: route.rate_limits.clone(),
    };
    if let Some(book) = route.pricing.as_deref().map(prices::PriceBook::from_saved).transpose()?.flatten() {
        assessment.llm = request::plan(&book, method, target.path(), body)?;
    }
    Ok(assessment)
}

fn decode(segment: &str) -> Vec<u8> {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) =
                (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The path's segments, decoded, without empty ones (`/v1//x/` is `v1`, `x`).
fn segments(path: &str) -> Vec<Vec<u8>> {
    path.split('/').filter(|s| !s.is_empty()).map(decode).collect()
}

/// How deep `target` lies under `route`'s base URL (its path segments), if it does:
/// same scheme, host and port, and the base's decoded path segments as a prefix.
pub fn depth_under(route: &Route, target: &url::Url) -> Option<usize> {
    let base = url::Url::parse(&route.base_url).ok()?;
    let same = base.scheme() == target.scheme()
        && normalised_host(&base) == normalised_host(target)
        && base.port_or_known_default() == target.port_or_known_default();
    let prefix = segments(base.path());
    (same && segments(target.path()).starts_with(&prefix)).then_some(prefix.len())
}

/// The route `target` lies under (see the module docs), if any.
pub fn route_for<'a>(routes: &'a [Route], target: &url::Url) -> Option<&'a Route> {
    routes
        .iter()
        .filter_map(|r| depth_under(r, target).map(|depth| (depth, r)))
        // The longest base URL; between equal ones the priced (a flat twin cannot
        // dodge metering), then the first by name (the same answer in every store).
        .max_by(|(la, a), (lb, b)| {
            (la, a.pricing.is_some()).cmp(&(lb, b.pricing.is_some())).then_with(|| b.name.cmp(&a.name))
        })
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, base: &str, priced: bool) -> Route {
        Route {
            name: name.into(),
            base_url: base.into(),
            cost_micros: 0,
            pricing: priced.then(|| "{}".into()),
            rate_limits: None,
            mcp: false,
        }
    }

    fn matched<'a>(routes: &'a [Route], url: &str) -> Option<&'a str> {
        route_for(routes, &url::Url::parse(url).unwrap()).map(|r| r.name.as_str())
    }

    #[test]
    fn an_mcp_connection_sets_no_least_price_of_its_own() {
        let body = bytes::Bytes::new();
        let target = url::Url::parse("https://tools.example/mcp").unwrap();
        let mut r = route("tools", "https://tools.example/mcp", false);
        r.cost_micros = 2_000;
        let flat = assess(std::slice::from_ref(&r), &http::Method::POST, &body, &target).unwrap();
        assert_eq!(flat.least_micros, 2_000, "an HTTP connection's flat price is the least");
        r.mcp = true;
        let mcp = assess(&[r], &http::Method::POST, &body, &target).unwrap();
        assert_eq!(
            (mcp.connection.as_deref(), mcp.least_micros),
            (Some("tools"), 0),
            "the MCP call carries its price"
        );
    }

    #[test]
    fn a_target_matches_the_longest_base_by_scheme_host_port_and_whole_segments() {
        let routes = [
            route("openai", "https://api.openai.com/v1", true),
            route("files", "https://api.openai.com/v1/files", false),
            route("root", "https://other.example", true),
        ];
        assert_eq!(matched(&routes, "https://api.openai.com/v1/chat/completions"), Some("openai"));
        assert_eq!(
            matched(&routes, "https://API.OpenAI.com./v1/chat/completions"),
            Some("openai"),
            "host as judged"
        );
        assert_eq!(matched(&routes, "https://api.openai.com:443/v1/x"), Some("openai"), "default port");
        assert_eq!(matched(&routes, "https://api.openai.com/v1/files/abc"), Some("files"), "longest wins");
        assert_eq!(
            matched(&routes, "https://api.openai.com/%76%31/chat/completions"),
            Some("openai"),
            "encoded"
        );
        assert_eq!(matched(&routes, "https://api.openai.com//v1//chat"), Some("openai"), "empty segments");
        assert_eq!(
            matched(&routes, "https://api.openai.com/v1/../v1/chat"),
            Some("openai"),
            "dots resolved by the parser"
        );
        assert_eq!(matched(&routes, "https://api.openai.com/v10/chat"), None, "whole segments only");
        assert_eq!(matched(&routes, "http://api.openai.com/v1/chat"), None, "another scheme");
        assert_eq!(matched(&routes, "https://api.openai.com:8443/v1/chat"), None, "another port");
        assert_eq!(matched(&routes, "https://other.example/anything"), Some("root"));
    }

    #[test]
    fn between_equal_bases_the_priced_one_then_the_first_name_wins_in_any_order() {
        let mut routes = vec![
            route("b-flat", "https://llm.example/v1", false),
            route("z-priced", "https://llm.example/v1", true),
            route("a-priced", "https://llm.example/v1", true),
        ];
        for _ in 0..3 {
            assert_eq!(
                matched(&routes, "https://llm.example/v1/chat/completions"),
                Some("a-priced"),
                "{routes:?}"
            );
            routes.rotate_left(1);
        }
    }
}
