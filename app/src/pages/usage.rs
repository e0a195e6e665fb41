//! Usage: what the sponsor's agents spent over the last 7, 30 or 90 days — by
//! model, by connection, per day and per agent (with their tokens) — and how much
//! of what was held (metered calls hold their ceiling) was settled. One
//! `get_usage` call, the same numbers as `GET /api/usage`; charts are
//! server-rendered (CSS bars and SVG, no chart library).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::live::Live;
use crate::model::{AgentUsage, DayUsage, UsageReport, UsageTotals};
use crate::money::{dollars, format_units};
use crate::rpc::get_usage;

const PERIODS: [u32; 3] = [7, 30, 90];
const CHART_W: f64 = 720.0;
const CHART_H: f64 = 160.0;
const PAD_BOTTOM: f64 = 22.0;

/// 1234567 → "1,234,567".
fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// "1 call", "2 calls".
fn calls(n: i64) -> String {
    if n == 1 { "1 call".into() } else { format!("{} calls", count(n)) }
}

#[component]
pub fn UsagePage() -> impl IntoView {
    let tick = Live::get().map(|l| l.tick);
    let query = use_query_map();
    let days = move || {
        query
            .read()
            .get("days")
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|d| PERIODS.contains(d))
            .unwrap_or(30)
    };
    let report = Resource::new(move || (days(), tick.map(|t| t.get())), |(d, _)| get_usage(Some(d)));
    view! {
        <Title text="Usage"/>
        <div class="page-head overview-head">
            <h1>"Usage"</h1>
            <nav class="range-switch" aria-label="Period">
                {PERIODS.map(|p| view! {
                    <a href=format!("/usage?days={p}") aria-current=move || (days() == p).then_some("page")>
                        {format!("{p} days")}
                    </a>
                })}
            </nav>
        </div>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match report.await {
                    Ok(report) => view! { <Usage report/> }.into_any(),
                    Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Usage(report: UsageReport) -> impl IntoView {
    if report.totals.requests == 0 {
        return view! {
            <div class="card empty" id="usage-empty">
                <h2>"Nothing spent in this period"</h2>
                <p class="muted">
                    "Calls your agents make through AEGIS show here once they are settled. Give a connection "
                    "a price table (Connections → Prices) and its LLM calls are charged what the provider "
                    "reports they used."
                </p>
            </div>
        }
        .into_any();
    }
    view! {
        <UsageCards totals=report.totals/>
        <section class="card chart-card" aria-labelledby="usage-day-heading">
            <h2 id="usage-day-heading">{format!("Spend per day, {} to {} (UTC)", report.from, report.to)}</h2>
            <DayChart days=report.by_day.clone()/>
        </section>
        <div class="charts">
            <section class="card" aria-labelledby="by-model-heading">
                <h2 id="by-model-heading">"Spend by model"</h2>
                <SpendBars id="usage-by-model" rows=report.by_model.iter().map(|m| {
                    let label = if m.model.is_empty() { "not metered".to_owned() } else { m.model.clone() };
                    let key = format!("{}/{}", m.connection, m.model);
                    (key, label, m.connection.clone(), m.totals)
                }).collect()/>
            </section>
            <section class="card" aria-labelledby="by-connection-heading">
                <h2 id="by-connection-heading">"Spend by connection"</h2>
                <SpendBars id="usage-by-connection" rows=report.by_connection.iter().map(|c| {
                    let label = if c.connection.is_empty() { "not metered".to_owned() } else { c.connection.clone() };
                    (c.connection.clone(), label, String::new(), c.totals)
                }).collect()/>
            </section>
        </div>
        <section class="card" aria-labelledby="by-agent-heading">
            <h2 id="by-agent-heading">"Tokens per agent"</h2>
            <AgentTable agents=report.by_agent/>
        </section>
    }
    .into_any()
}

#[component]
fn UsageCards(totals: UsageTotals) -> impl IntoView {
    let t = totals;
    let settled_pct = if t.held_micros > 0 {
        (i128::from(t.cost_micros) * 100 / i128::from(t.held_micros)) as i64
    } else {
        0
    };
    view! {
        <div class="cards" id="usage-cards">
            <div class="card stat" id="usage-spend">
                <span class="label">"Spend"</span>
                <span class="value">{dollars(t.cost_micros)}</span>
                <span class="muted small">{format!("{}, settled", calls(t.requests))}</span>
            </div>
            <div class="card stat" id="usage-held">
                <span class="label">"Held before the calls"</span>
                <span class="value">{dollars(t.held_micros)}</span>
                <span class="muted small">{format!("{settled_pct}% of it was charged")}</span>
            </div>
            <div class="card stat" id="usage-tokens">
                <span class="label">"Tokens"</span>
                <span class="value">{count(t.tokens())}</span>
                <span class="muted small">
                    {format!("{} in · {} cached · {} out", count(t.tokens_in), count(t.tokens_cached + t.tokens_cache_write), count(t.tokens_out))}
                </span>
            </div>
            <div class="card stat" id="usage-ceiling">
                <span class="label">"Charged at the ceiling"</span>
                <span class="value">{count(t.at_ceiling)}</span>
                <span class="muted small">"Usage unreadable or the answer cut short."</span>
            </div>
        </div>
    }
}

/// Horizontal bars, dearest first: (key, label, sub-label, totals).
#[component]
fn SpendBars(id: &'static str, rows: Vec<(String, String, String, UsageTotals)>) -> impl IntoView {
    let max = rows.iter().map(|r| r.3.cost_micros).max().unwrap_or(0).max(1);
    view! {
        <ul class="spend-bars" id=id>
            {rows.into_iter().map(|(key, label, sub, t)| {
                let pct = (i128::from(t.cost_micros) * 100 / i128::from(max)) as i64;
                view! {
                    <li data-key=key>
                        <span class="bar-name">
                            {label}
                            {(!sub.is_empty()).then(|| view! { <span class="muted small">{format!(" · {sub}")}</span> })}
                        </span>
                        <span class="tier-track" aria-hidden="true">
                            <span class="tier-fill" style=format!("width: {pct}%")></span>
                        </span>
                        <span class="bar-value" data-micros=t.cost_micros.to_string()>{dollars(t.cost_micros)}</span>
                        <span class="muted small bar-detail">
                            {format!("{} · {} tokens", calls(t.requests), count(t.tokens()))}
                        </span>
                    </li>
                }
            }).collect_view()}
        </ul>
    }
}

#[component]
fn DayChart(days: Vec<DayUsage>) -> impl IntoView {
    let max = days.iter().map(|d| d.totals.cost_micros).max().unwrap_or(0).max(1) as f64;
    let plot_h = CHART_H - PAD_BOTTOM - 8.0;
    let step = CHART_W / days.len().max(1) as f64;
    let bar_w = (step * 0.7).max(1.0);
    let bars = days
        .iter()
        .enumerate()
        .filter(|(_, d)| d.totals.cost_micros > 0)
        .map(|(i, d)| {
            let h = (d.totals.cost_micros as f64 / max * plot_h).max(1.0);
            let x = step * i as f64 + (step - bar_w) / 2.0;
            view! {
                <rect class="bar allow" data-day=d.day.clone() x=format!("{x:.1}") y=format!("{:.1}", CHART_H - PAD_BOTTOM - h)
                    width=format!("{bar_w:.1}") height=format!("{h:.1}")/>
            }
        })
        .collect_view();
    let labels = days
        .iter()
        .enumerate()
        // Every seventh day and the last, never two labels on top of each other.
        .filter(|(i, _)| (i % 7 == 0 && days.len() - i > 4) || *i + 1 == days.len())
        .map(|(i, d)| {
            let x = format!("{:.1}", step * i as f64 + step / 2.0);
            view! { <text x=x y=format!("{}", CHART_H - 6.0) class="axis" text-anchor="middle">{d.day[5..].to_owned()}</text> }
        })
        .collect_view();
    let total: i64 = days.iter().map(|d| d.totals.cost_micros).sum();
    view! {
        <svg class="chart" id="usage-day-chart" viewBox=format!("0 0 {CHART_W} {CHART_H}") role="img"
            aria-labelledby="usage-day-title" preserveAspectRatio="none">
            <title id="usage-day-title">{format!("Spend per day: {} in total.", dollars(total))}</title>
            <line x1="0" x2=CHART_W.to_string() y1=format!("{}", CHART_H - PAD_BOTTOM) y2=format!("{}", CHART_H - PAD_BOTTOM) class="baseline"/>
            {bars}
            {labels}
        </svg>
        <table class="sr-only">
            <caption>"Spend per day"</caption>
            <thead><tr><th scope="col">"Day"</th><th scope="col">"Spend (USD)"</th></tr></thead>
            <tbody>
                {days.iter().filter(|d| d.totals.cost_micros > 0).map(|d| view! {
                    <tr><td>{d.day.clone()}</td><td>{format_units(d.totals.cost_micros)}</td></tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

#[component]
fn AgentTable(agents: Vec<AgentUsage>) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table class="table" id="usage-by-agent">
                <thead>
                    <tr>
                        <th scope="col">"Agent"</th>
                        <th scope="col" class="num">"Calls"</th>
                        <th scope="col" class="num">"Input"</th>
                        <th scope="col" class="num">"Cached"</th>
                        <th scope="col" class="num">"Output"</th>
                        <th scope="col" class="num">"Held"</th>
                        <th scope="col" class="num">"Spend"</th>
                    </tr>
                </thead>
                <tbody>
                    {agents.into_iter().map(|a| {
                        let t = a.totals;
                        let name = a.agent_name.clone().unwrap_or_else(|| "(deleted agent)".into());
                        let who = match a.agent_name {
                            Some(_) => view! { <a href=format!("/agents/{}?tab=wallet", a.agent_id)>{name.clone()}</a> }.into_any(),
                            None => view! { <span class="muted">{name.clone()}</span> }.into_any(),
                        };
                        view! {
                            <tr data-agent=name>
                                <td>{who}</td>
                                <td class="num">{count(t.requests)}</td>
                                <td class="num" data-col="in">{count(t.tokens_in)}</td>
                                <td class="num" data-col="cached">{count(t.tokens_cached + t.tokens_cache_write)}</td>
                                <td class="num" data-col="out">{count(t.tokens_out)}</td>
                                <td class="num">{dollars(t.held_micros)}</td>
                                <td class="num" data-col="spend">{dollars(t.cost_micros)}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-45_000), "-45,000");
    }
}
