//! Price tables: a connection's [`Pricing`] checked and completed from AEGIS's
//! default table (`server/prices/default.json`, with its sources and date) when it
//! is saved, and read back on the hot path as a [`PriceBook`].
//!
//! Saved tables are always complete (every model with all its prices), so a call is
//! priced by what the sponsor saw when saving, never by a later default.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use app::model::{ModelPrice, Pricing, PricingProvider};
use serde::Deserialize;

/// At most this many micro-units per million tokens (a million units per token).
pub const MAX_PRICE_PER_MTOK: i64 = 1_000_000_000_000;
/// At most this many output tokens a call.
pub const MAX_OUTPUT_TOKENS: i64 = 10_000_000;
/// At most this many models in one connection's table.
pub const MAX_MODELS: usize = 500;

/// One model's prices, complete: micro-units per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
    pub cache_write: i64,
    /// The model's own output cap, if known.
    pub max_output_tokens: Option<i64>,
}

impl Price {
    /// The dearest way an input token can be billed by `provider` (the ceiling
    /// assumes it): OpenAI has no cache writes, Anthropic does.
    pub fn dearest_input(&self, provider: PricingProvider) -> i64 {
        let read = self.input.max(self.cached_input);
        if provider == PricingProvider::Anthropic { read.max(self.cache_write) } else { read }
    }

    fn of(p: &ModelPrice) -> Option<Price> {
        let input = p.input_per_mtok_micros?;
        Some(Price {
            input,
            output: p.output_per_mtok_micros?,
            cached_input: p.cached_input_per_mtok_micros.unwrap_or(input),
            cache_write: p.cache_write_per_mtok_micros.unwrap_or(input),
            max_output_tokens: p.max_output_tokens,
        })
    }

    fn model_price(&self) -> ModelPrice {
        ModelPrice {
            input_per_mtok_micros: Some(self.input),
            output_per_mtok_micros: Some(self.output),
            cached_input_per_mtok_micros: Some(self.cached_input),
            cache_write_per_mtok_micros: Some(self.cache_write),
            max_output_tokens: self.max_output_tokens,
        }
    }
}

#[derive(Deserialize)]
struct DefaultTable {
    openai: BTreeMap<String, ModelPrice>,
    anthropic: BTreeMap<String, ModelPrice>,
}

fn defaults() -> &'static DefaultTable {
    static TABLE: OnceLock<DefaultTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_json::from_str(include_str!("../../prices/default.json"))
            .expect("server/prices/default.json is valid (unit-tested)")
    })
}

/// The default table's models for `provider` (empty for `flat`).
pub fn default_models(provider: PricingProvider) -> &'static BTreeMap<String, ModelPrice> {
    static EMPTY: BTreeMap<String, ModelPrice> = BTreeMap::new();
    match provider {
        PricingProvider::Openai => &defaults().openai,
        PricingProvider::Anthropic => &defaults().anthropic,
        PricingProvider::Flat => &EMPTY,
    }
}

fn check_price(what: &str, v: Option<i64>) -> Result<(), String> {
    match v {
        Some(v) if !(0..=MAX_PRICE_PER_MTOK).contains(&v) => {
            Err(format!("{what} must be between 0 and {MAX_PRICE_PER_MTOK}"))
        }
        _ => Ok(()),
    }
}

fn check_model_price(at: &str, p: &ModelPrice) -> Result<(), String> {
    check_price(&format!("{at}.input_per_mtok_micros"), p.input_per_mtok_micros)?;
    check_price(&format!("{at}.output_per_mtok_micros"), p.output_per_mtok_micros)?;
    check_price(&format!("{at}.cached_input_per_mtok_micros"), p.cached_input_per_mtok_micros)?;
    check_price(&format!("{at}.cache_write_per_mtok_micros"), p.cache_write_per_mtok_micros)?;
    check_tokens(&format!("{at}.max_output_tokens"), p.max_output_tokens, 0)
}

fn check_tokens(what: &str, v: Option<i64>, least: i64) -> Result<(), String> {
    match v {
        Some(v) if !(least..=MAX_OUTPUT_TOKENS).contains(&v) => {
            Err(format!("{what} must be between {least} and {MAX_OUTPUT_TOKENS}"))
        }
        _ => Ok(()),
    }
}

/// A price given in part, completed from `default` (the default table's entry).
fn complete(given: &ModelPrice, default: Option<&ModelPrice>) -> ModelPrice {
    let d = default.cloned().unwrap_or_default();
    ModelPrice {
        input_per_mtok_micros: given.input_per_mtok_micros.or(d.input_per_mtok_micros),
        output_per_mtok_micros: given.output_per_mtok_micros.or(d.output_per_mtok_micros),
        cached_input_per_mtok_micros: given.cached_input_per_mtok_micros.or(d.cached_input_per_mtok_micros),
        cache_write_per_mtok_micros: given.cache_write_per_mtok_micros.or(d.cache_write_per_mtok_micros),
        max_output_tokens: given.max_output_tokens.or(d.max_output_tokens),
    }
}

/// Checks a sponsor's pricing and completes it: omitted `models` become the default
/// table's for the provider; a model's missing prices come from the default table
/// (a model the table does not know must give input and output prices); every
/// price is then explicit. `flat` carries nothing else. The message names the field.
pub fn resolve(pricing: Pricing) -> Result<Pricing, String> {
    let provider = pricing.provider;
    if provider == PricingProvider::Flat {
        if pricing.models.is_some() || pricing.fallback.is_some() || pricing.max_output_tokens.is_some() {
            return Err("pricing: a flat connection takes no models, fallback or max_output_tokens".into());
        }
        return Ok(pricing);
    }
    check_tokens("pricing.max_output_tokens", pricing.max_output_tokens, 1)?;
    let defaults = default_models(provider);
    let given = pricing
        .models
        .unwrap_or_else(|| defaults.keys().map(|k| (k.clone(), ModelPrice::default())).collect());
    if given.len() > MAX_MODELS {
        return Err(format!("pricing.models: at most {MAX_MODELS} models"));
    }
    let mut models = BTreeMap::new();
    for (name, price) in given {
        let at = format!("pricing.models[{name:?}]");
        if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("{at}: a model name is 1 to 200 printable characters without spaces"));
        }
        check_model_price(&at, &price)?;
        let full = complete(&price, defaults.get(&name));
        let resolved = Price::of(&full).ok_or_else(|| {
            format!("{at}: not in AEGIS's default price table; give input_per_mtok_micros and output_per_mtok_micros")
        })?;
        models.insert(name, resolved.model_price());
    }
    let fallback = match pricing.fallback {
        Some(f) => {
            check_model_price("pricing.fallback", &f)?;
            let price = Price::of(&f)
                .ok_or("pricing.fallback: give input_per_mtok_micros and output_per_mtok_micros")?;
            Some(price.model_price())
        }
        None => None,
    };
    if models.is_empty() && fallback.is_none() {
        return Err("pricing: no models and no fallback would deny every call".into());
    }
    Ok(Pricing { provider, models: Some(models), max_output_tokens: pricing.max_output_tokens, fallback })
}

/// A saved pricing, ready to price calls.
#[derive(Debug, Clone)]
pub struct PriceBook {
    pub provider: PricingProvider,
    models: BTreeMap<String, Price>,
    pub max_output_tokens: Option<i64>,
    fallback: Option<Price>,
}

/// How a model was priced: under its own name, a table entry it is a dated
/// snapshot of, or the fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The table entry used (`"fallback"` for the fallback).
    pub entry: String,
    pub price: Price,
}

/// `suffix` names a snapshot of a model: `20250514`, `2024-07-18` or `latest`.
fn is_snapshot(suffix: &str) -> bool {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    suffix == "latest"
        || (suffix.len() == 8 && digits(suffix))
        || (suffix.len() == 10
            && suffix.split('-').map(str::len).eq([4, 2, 2])
            && suffix.split('-').all(digits))
}

impl PriceBook {
    /// The saved JSON of a priced connection; `None` for flat (nothing to meter).
    /// An unreadable table is an error: the caller fails closed.
    pub fn from_saved(json: &str) -> Result<Option<PriceBook>, String> {
        let pricing: Pricing =
            serde_json::from_str(json).map_err(|_| "the connection's pricing is unreadable")?;
        if pricing.provider == PricingProvider::Flat {
            return Ok(None);
        }
        let price = |p: &ModelPrice| Price::of(p).ok_or("the connection's pricing is incomplete");
        let models = pricing
            .models
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| Ok((k.clone(), price(v)?)))
            .collect::<Result<_, &str>>()?;
        let fallback = pricing.fallback.as_ref().map(price).transpose()?;
        Ok(Some(PriceBook {
            provider: pricing.provider,
            models,
            max_output_tokens: pricing.max_output_tokens,
            fallback,
        }))
    }

    /// The price of `model`: its own entry; else the longest entry it is a dated
    /// snapshot of (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`,
    /// `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`); else the fallback;
    /// else `None` (not allowed).
    pub fn price(&self, model: &str) -> Option<Priced> {
        if let Some(p) = self.models.get(model) {
            return Some(Priced { entry: model.to_owned(), price: *p });
        }
        let snapshot = self
            .models
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(is_snapshot)
            })
            .max_by_key(|(name, _)| name.len());
        if let Some((name, p)) = snapshot {
            return Some(Priced { entry: name.clone(), price: *p });
        }
        self.fallback.map(|price| Priced { entry: "fallback".into(), price })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(input: i64, output: i64) -> ModelPrice {
        ModelPrice {
            input_per_mtok_micros: Some(input),
            output_per_mtok_micros: Some(output),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_table_parses_and_every_entry_is_complete() {
        for provider in [PricingProvider::Openai, PricingProvider::Anthropic] {
            let models = default_models(provider);
            assert!(models.len() >= 5, "{provider:?} has a real table");
            for (name, p) in models {
                assert!(Price::of(p).is_some(), "{name} has input and output prices");
                check_model_price(name, p).unwrap();
            }
        }
        assert_eq!(
            default_models(PricingProvider::Openai)["gpt-4o-mini"].input_per_mtok_micros,
            Some(150_000)
        );
    }

    #[test]
    fn omitted_models_take_the_default_table_and_given_ones_are_the_allow_list() {
        let all = resolve(Pricing {
            provider: PricingProvider::Openai,
            models: None,
            max_output_tokens: None,
            fallback: None,
        })
        .unwrap();
        assert_eq!(all.models.as_ref().unwrap().len(), default_models(PricingProvider::Openai).len());
        let one = BTreeMap::from([(
            "gpt-4o-mini".to_owned(),
            ModelPrice { output_per_mtok_micros: Some(1), ..Default::default() },
        )]);
        let p = resolve(Pricing {
            provider: PricingProvider::Openai,
            models: Some(one),
            max_output_tokens: Some(100),
            fallback: None,
        })
        .unwrap();
        let m = &p.models.as_ref().unwrap()["gpt-4o-mini"];
        assert_eq!(
            (m.input_per_mtok_micros, m.output_per_mtok_micros),
            (Some(150_000), Some(1)),
            "given wins, rest from defaults"
        );
        assert_eq!(m.cached_input_per_mtok_micros, Some(75_000));
        let book = PriceBook::from_saved(&serde_json::to_string(&p).unwrap()).unwrap().unwrap();
        assert!(book.price("gpt-4o").is_none(), "not in the allow-list");
        assert_eq!(book.price("gpt-4o-mini-2024-07-18").unwrap().entry, "gpt-4o-mini");
    }

    #[test]
    fn unknown_models_need_prices_and_bad_values_name_their_field() {
        let unknown = BTreeMap::from([("my-model".to_owned(), ModelPrice::default())]);
        let e = resolve(Pricing {
            provider: PricingProvider::Openai,
            models: Some(unknown),
            max_output_tokens: None,
            fallback: None,
        })
        .unwrap_err();
        assert!(e.contains("my-model") && e.contains("input_per_mtok_micros"), "{e}");
        let negative = BTreeMap::from([("m".to_owned(), mp(-1, 1))]);
        let e = resolve(Pricing {
            provider: PricingProvider::Openai,
            models: Some(negative),
            max_output_tokens: None,
            fallback: None,
        })
        .unwrap_err();
        assert!(e.contains("input_per_mtok_micros must be between"), "{e}");
        let e = resolve(Pricing {
            provider: PricingProvider::Anthropic,
            models: Some(BTreeMap::new()),
            max_output_tokens: Some(0),
            fallback: None,
        })
        .unwrap_err();
        assert!(e.contains("max_output_tokens"), "{e}");
        let e = resolve(Pricing {
            provider: PricingProvider::Anthropic,
            models: Some(BTreeMap::new()),
            max_output_tokens: None,
            fallback: None,
        })
        .unwrap_err();
        assert!(e.contains("deny every call"), "{e}");
        let e = resolve(Pricing {
            provider: PricingProvider::Flat,
            models: Some(BTreeMap::new()),
            max_output_tokens: None,
            fallback: None,
        })
        .unwrap_err();
        assert!(e.contains("flat"), "{e}");
    }

    #[test]
    fn snapshots_match_only_dated_suffixes_and_the_longest_entry() {
        let models = BTreeMap::from([
            ("claude-sonnet-4".to_owned(), mp(1, 1)),
            ("claude-sonnet-4-5".to_owned(), mp(2, 2)),
            ("gpt-4o".to_owned(), mp(3, 3)),
        ]);
        let p = resolve(Pricing {
            provider: PricingProvider::Anthropic,
            models: Some(models),
            max_output_tokens: None,
            fallback: None,
        })
        .unwrap();
        let book = PriceBook::from_saved(&serde_json::to_string(&p).unwrap()).unwrap().unwrap();
        assert_eq!(book.price("claude-sonnet-4-5-20250929").unwrap().entry, "claude-sonnet-4-5");
        assert_eq!(book.price("claude-sonnet-4-20250514").unwrap().entry, "claude-sonnet-4");
        assert_eq!(book.price("gpt-4o-2024-08-06").unwrap().entry, "gpt-4o");
        assert_eq!(book.price("gpt-4o-latest").unwrap().entry, "gpt-4o");
        assert!(book.price("gpt-4o-mini").is_none(), "another model, not a snapshot");
        assert!(book.price("claude-sonnet-4-6").is_none(), "a newer model is not an older one's snapshot");
        assert!(book.price("gpt-4o-2024-8-6").is_none());
    }

    #[test]
    fn the_fallback_prices_what_the_table_does_not_name() {
        let p = resolve(Pricing {
            provider: PricingProvider::Openai,
            models: Some(BTreeMap::new()),
            max_output_tokens: Some(10),
            fallback: Some(mp(5, 6)),
        })
        .unwrap();
        let book = PriceBook::from_saved(&serde_json::to_string(&p).unwrap()).unwrap().unwrap();
        let priced = book.price("anything").unwrap();
        assert_eq!(
            (priced.entry.as_str(), priced.price.input, priced.price.cached_input),
            ("fallback", 5, 5)
        );
        assert!(PriceBook::from_saved("{\"provider\":\"flat\"}").unwrap().is_none(), "flat meters nothing");
        assert!(PriceBook::from_saved("not json").is_err(), "unreadable fails closed");
    }
}
