//! What a metered call is charged once its answer has ended (the rule; "How AEGIS
//! computes cost" in the docs):
//!
//! - The answer carried readable `usage`: its cost,
//!   `ceil((input × input price + cached × cached price + cache writes × cache-write
//!   price + output × output price) / 1,000,000)` micro-units (prices per million
//!   tokens), whatever the status (a provider that reports usage billed it).
//! - A non-2xx answer without usage: 0. OpenAI and Anthropic bill generated tokens;
//!   an error answered before generation (400, 401, 404, 429, 5xx) generates none.
//! - A 2xx answer whose usage is missing or unreadable, or that was cut short (the
//!   agent went away, the upstream broke off): the ceiling held before the call.
//!   What AEGIS cannot read, it charges at the most the call could have cost.
//!
//! The agent's declared cost (and the connection's per-call `cost_micros`) may
//! raise the charge, never lower it.

use serde_json::{Value, json};

use super::prices::Price;
use super::usage::Usage;

/// `ceil(n / 1,000,000)` micro-units for `n` = tokens × price per million, clamped
/// to what a wallet can hold.
pub fn micros(per_million: i128) -> i64 {
    let n = per_million.max(0);
    let whole = n / 1_000_000 + i128::from(n % 1_000_000 != 0);
    i64::try_from(whole).unwrap_or(i64::MAX).min(app::money::MAX_MICROS)
}

/// The cost of `usage` at `price`.
pub fn cost(usage: &Usage, price: &Price) -> i64 {
    micros(
        i128::from(usage.input) * i128::from(price.input)
            + i128::from(usage.cached_input) * i128::from(price.cached_input)
            + i128::from(usage.cache_write) * i128::from(price.cache_write)
            + i128::from(usage.output) * i128::from(price.output),
    )
}

/// How the charge was obtained (the audit record's `metering.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Usage,
    Ceiling,
    Declared,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Usage => "usage",
            Source::Ceiling => "ceiling",
            Source::Declared => "declared",
        }
    }
}

/// What the answer said, as the stream tap read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    pub usage: Option<Usage>,
    /// Usage was there but not readable.
    pub malformed: Option<String>,
    /// The answer did not end normally: why.
    pub cut: Option<String>,
}

/// A metered call's charge and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    pub micros: i64,
    pub source: Source,
    /// Why the ceiling (or 0) was charged instead of usage.
    pub note: Option<String>,
    pub usage: Option<Usage>,
}

/// The rule above: `status` of the answer, what was read, the price and the
/// ceiling held, and the least the call costs anyway (declared, per-call).
pub fn bill(status: u16, reading: &Reading, price: &Price, ceiling: i64, least: i64) -> Bill {
    let ok = (200..300).contains(&status);
    let metered = match (reading.usage, &reading.malformed, &reading.cut) {
        (_, Some(bad), _) if ok => Bill {
            micros: ceiling,
            source: Source::Ceiling,
            note: Some(format!("unreadable usage: {bad}")),
            usage: None,
        },
        (_, _, Some(cut)) if ok => {
            Bill { micros: ceiling, source: Source::Ceiling, note: Some(cut.clone()), usage: reading.usage }
        }
        (Some(u), None, _) => {
            Bill { micros: cost(&u, price), source: Source::Usage, note: None, usage: Some(u) }
        }
        (None, None, None) if ok => Bill {
            micros: ceiling,
            source: Source::Ceiling,
            note: Some("the answer carried no usage".into()),
            usage: None,
        },
        _ => Bill {
            micros: 0,
            source: Source::Usage,
            note: Some(format!("status {status}: nothing generated, nothing billed")),
            usage: None,
        },
    };
    if least > metered.micros {
        return Bill { micros: least, source: Source::Declared, ..metered };
    }
    metered
}

impl Bill {
    /// The audit record's `metering` object.
    pub fn detail(&self, call: &super::LlmCall, connection: &str) -> Value {
        let u = self.usage.unwrap_or_default();
        let p = call.priced.price;
        json!({
            "connection": connection,
            "provider": call.provider.as_str(),
            "model": call.model,
            "price_entry": call.priced.entry,
            "price": {"input_per_mtok_micros": p.input, "output_per_mtok_micros": p.output,
                      "cached_input_per_mtok_micros": p.cached_input, "cache_write_per_mtok_micros": p.cache_write},
            "tokens_in": u.input,
            "tokens_cached": u.cached_input,
            "tokens_cache_write": u.cache_write,
            "tokens_out": u.output,
            "usage_read": self.usage.is_some(),
            "ceiling_micros": call.ceiling_micros,
            "charged_micros": self.micros,
            "source": self.source.as_str(),
            "note": self.note,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICE: Price = Price {
        input: 150_000,
        output: 600_000,
        cached_input: 75_000,
        cache_write: 150_000,
        max_output_tokens: None,
    };

    #[test]
    fn cost_is_the_issue_formula_rounded_up() {
        // 1,000 uncached in, 500 cached, 200 out at gpt-4o-mini prices:
        // (1000×150000 + 500×75000 + 200×600000) / 1e6 = 307.5 → 308.
        let u = Usage { input: 1000, cached_input: 500, cache_write: 0, output: 200 };
        assert_eq!(cost(&u, &PRICE), 308);
        assert_eq!(cost(&Usage::default(), &PRICE), 0);
        assert_eq!(
            cost(&Usage { input: 1, ..Default::default() }, &PRICE),
            1,
            "a fraction of a micro-unit is a micro-unit"
        );
        assert_eq!(micros(i128::MAX), app::money::MAX_MICROS, "never past what a wallet holds");
    }

    #[test]
    fn usage_settles_and_what_cannot_be_read_settles_at_the_ceiling() {
        let u = Usage { input: 10, output: 10, ..Default::default() };
        let read = Reading { usage: Some(u), ..Default::default() };
        assert_eq!(
            bill(200, &read, &PRICE, 9_999, 0),
            Bill { micros: 8, source: Source::Usage, note: None, usage: Some(u) }
        );
        let none = bill(200, &Reading::default(), &PRICE, 9_999, 0);
        assert_eq!((none.micros, none.source), (9_999, Source::Ceiling));
        let bad = Reading { usage: Some(u), malformed: Some("x".into()), cut: None };
        assert_eq!(
            bill(200, &bad, &PRICE, 9_999, 0).source,
            Source::Ceiling,
            "one bad usage spoils the answer"
        );
        let cut = Reading { usage: Some(u), malformed: None, cut: Some("the agent went away".into()) };
        let b = bill(200, &cut, &PRICE, 9_999, 0);
        assert_eq!((b.micros, b.note.as_deref()), (9_999, Some("the agent went away")));
    }

    #[test]
    fn errors_before_generation_cost_nothing_unless_usage_says_otherwise() {
        assert_eq!(bill(429, &Reading::default(), &PRICE, 9_999, 0).micros, 0);
        assert_eq!(
            bill(500, &Reading { cut: Some("broke".into()), ..Default::default() }, &PRICE, 9_999, 0).micros,
            0
        );
        let u = Usage { input: 10, output: 10, ..Default::default() };
        assert_eq!(bill(400, &Reading { usage: Some(u), ..Default::default() }, &PRICE, 9_999, 0).micros, 8);
    }

    #[test]
    fn a_declared_cost_raises_the_charge_never_lowers_it() {
        let u = Usage { input: 10, output: 10, ..Default::default() };
        let read = Reading { usage: Some(u), ..Default::default() };
        let b = bill(200, &read, &PRICE, 9_999, 50);
        assert_eq!((b.micros, b.source), (50, Source::Declared));
        assert_eq!(bill(200, &read, &PRICE, 9_999, 3).micros, 8);
        assert_eq!(bill(429, &Reading::default(), &PRICE, 9_999, 50).micros, 50);
    }
}
