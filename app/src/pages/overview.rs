//! The overview: today's numbers, spend against limits, charts of the last 24 hours
//! or 30 days (server-rendered SVG, no chart library), trust tiers and the latest
//! events. Everything comes from one `overview_stats` call, the same numbers as
//! `GET /api/dashboard/stats`.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::live::Live;
use crate::model::{AuditRecord, DashboardStats, StatsBucket, StatsRange, TierCount};
use crate::money::format_units;
use crate::rpc::overview_stats;

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 180.0;
const PAD_BOTTOM: f64 = 22.0;

#[component]
pub fn OverviewPage() -> impl IntoView {
    let tick = Live::get().map(|l| l.tick);
    let query = use_query_map();
    let range = move || StatsRange::parse(query.read().get("range").as_deref()).unwrap_or_default();
    let stats = Resource::new(
        move || (range(), tick.map(|t| t.get())),
        |(r, _)| overview_stats(Some(r.as_str().to_owned())),
    );
    view! {
        <Title text="Overview"/>
        <div class="page-head overview-head">
            <h1>"Overview"</h1>
            <nav class="range-switch" aria-label="Time range">
                <a href="/?range=24h" aria-current=move || (range() == StatsRange::Day).then_some("page")>"24 hours"</a>
                <a href="/?range=30d" aria-current=move || (range() == StatsRange::Month).then_some("page")>"30 days"</a>
            </nav>
        </div>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match stats.await {
                    Ok(stats) => view! { <Overview stats/> }.into_any(),
                    Err(e) => view! { <p class="alert error" role="alert">{e.message}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Overview(stats: DashboardStats) -> impl IntoView {
    let no_agents = stats.active_agents + stats.suspended_agents == 0;
    let denials: i64 = stats.denials_by_stage.iter().map(|d| d.count).sum();
    let period = if stats.range == StatsRange::Day { "last 24 hours" } else { "last 30 days" };
    view! {
        {no_agents.then(|| view! {
            <div class="card empty">
                <h2>"No agents yet"</h2>
                <p class="muted">"Create an agent to give it an AEGIS key instead of real credentials."</p>
                <a class="button primary" href="/agents">"Create an agent"</a>
            </div>
        })}
        <div class="cards" id="overview-cards">
            <div class="card stat" id="stat-actions">
                <span class="label">"Actions today"</span>
                <span class="value">{stats.actions_today}</span>
            </div>
            <div class="card stat" id="stat-denials">
                <span class="label">"Denials today"</span>
                <span class="value">{denials}</span>
                {if stats.denials_by_stage.is_empty() {
                    view! { <span class="muted small">"None"</span> }.into_any()
                } else {
                    view! {
                        <ul class="by-stage">
                            {stats.denials_by_stage.iter().map(|d| view! {
                                <li data-stage=d.stage.clone()>{d.stage.clone()}": "<strong>{d.count}</strong></li>
                            }).collect_view()}
                        </ul>
                    }.into_any()
                }}
            </div>
            <div class="card stat" id="stat-spend">
                <span class="label">"Spend today / this month"</span>
                <span class="value">{format!("${}", format_units(stats.spend.today_micros))}</span>
                <span class="muted small">
                    {limit_text("day", stats.spend.today_micros, stats.spend.daily_limit_micros)}
                </span>
                <span class="muted small">
                    {format!("${} this month · ", format_units(stats.spend.month_micros))}
                    {limit_text("month", stats.spend.month_micros, stats.spend.monthly_limit_micros)}
                </span>
                {(stats.spend.unlimited_agents > 0).then(|| view! {
                    <span class="muted small">{format!("{} agent(s) without a limit", stats.spend.unlimited_agents)}</span>
                })}
            </div>
            <a class="card stat" href="/approvals" id="stat-pending">
                <span class="label">"Pending approvals"</span>
                <span class="value">{stats.pending_approvals}</span>
            </a>
            <a class="card stat" href="/agents" id="stat-suspended">
                <span class="label">"Suspended agents"</span>
                <span class="value">{stats.suspended_agents}</span>
                <span class="muted small">{format!("{} active", stats.active_agents)}</span>
            </a>
        </div>
        <div class="charts">
            <section class="card chart-card" aria-labelledby="spend-heading">
                <h2 id="spend-heading">{format!("Spend, {period}")}</h2>
                <SpendChart series=stats.series.clone() range=stats.range/>
            </section>
            <section class="card chart-card" aria-labelledby="actions-heading">
                <h2 id="actions-heading">{format!("Actions, {period}")}</h2>
                <ActionsChart series=stats.series.clone() range=stats.range/>
            </section>
        </div>
        <div class="charts">
            <section class="card" aria-labelledby="tiers-heading">
                <h2 id="tiers-heading">"Trust tiers"</h2>
                <TrustBars tiers=stats.trust_tiers/>
            </section>
            <section class="card" aria-labelledby="latest-heading">
                <h2 id="latest-heading">"Latest events"</h2>
                <LatestEvents records=stats.latest/>
            </section>
        </div>
    }
}

fn limit_text(window: &str, spent: i64, limit: i64) -> String {
    if limit == 0 {
        return format!("no {window} limit set");
    }
    let pct = (i128::from(spent) * 100 / i128::from(limit).max(1)) as i64;
    format!("of ${} per {window} ({pct}%)", format_units(limit))
}

fn bucket_label(b: &StatsBucket, range: StatsRange) -> String {
    match range {
        StatsRange::Day => b.start.format("%H:00").to_string(),
        StatsRange::Month => b.start.format("%b %d").to_string(),
    }
}

/// X-axis labels: every sixth bucket, and the last.
fn axis_labels(series: &[StatsBucket], range: StatsRange) -> AnyView {
    let n = series.len().max(1) as f64;
    let step = CHART_W / n;
    series
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 6 == 0 || *i + 1 == series.len())
        .map(|(i, b)| {
            let x = format!("{:.1}", step * i as f64 + step / 2.0);
            view! { <text x=x y=format!("{}", CHART_H - 6.0) class="axis" text-anchor="middle">{bucket_label(b, range)}</text> }
        })
        .collect_view()
        .into_any()
}

#[component]
fn SpendChart(series: Vec<StatsBucket>, range: StatsRange) -> impl IntoView {
    let total: i64 = series.iter().map(|b| b.spend_micros).sum();
    if total == 0 {
        return view! { <p class="empty muted" id="spend-empty">"No spend in this period."</p> }.into_any();
    }
    let max = series.iter().map(|b| b.spend_micros).max().unwrap_or(1).max(1) as f64;
    let plot_h = CHART_H - PAD_BOTTOM - 8.0;
    let step = CHART_W / series.len().max(1) as f64;
    let y = |v: i64| CHART_H - PAD_BOTTOM - (v as f64 / max) * plot_h;
    let points: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{:.1},{:.1}", step * i as f64 + step / 2.0, y(b.spend_micros)))
        .collect();
    let area = format!(
        "{:.1},{:.1} {} {:.1},{:.1}",
        step / 2.0,
        CHART_H - PAD_BOTTOM,
        points.join(" "),
        CHART_W - step / 2.0,
        CHART_H - PAD_BOTTOM
    );
    let summary = format!(
        "Spend over time: ${} in total, at most ${} in one bucket.",
        format_units(total),
        format_units(max as i64)
    );
    view! {
        <svg class="chart" id="spend-chart" viewBox=format!("0 0 {CHART_W} {CHART_H}") role="img"
            aria-labelledby="spend-chart-title" preserveAspectRatio="none">
            <title id="spend-chart-title">{summary}</title>
            <line x1="0" x2=CHART_W.to_string() y1=format!("{}", CHART_H - PAD_BOTTOM) y2=format!("{}", CHART_H - PAD_BOTTOM) class="baseline"/>
            <polygon points=area class="spend-area"/>
            <polyline points=points.join(" ") class="spend-line"/>
            {axis_labels(&series, range)}
        </svg>
        <table class="sr-only">
            <caption>"Spend per bucket"</caption>
            <thead><tr><th scope="col">"From"</th><th scope="col">"Spend (USD)"</th></tr></thead>
            <tbody>
                {series.iter().filter(|b| b.spend_micros > 0).map(|b| view! {
                    <tr><td>{bucket_label(b, range)}</td><td>{format_units(b.spend_micros)}</td></tr>
                }).collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

#[component]
fn ActionsChart(series: Vec<StatsBucket>, range: StatsRange) -> impl IntoView {
    let totals = series.iter().fold((0, 0, 0), |(a, d, e), b| (a + b.allow, d + b.deny, e + b.error));
    if totals == (0, 0, 0) {
        return view! { <p class="empty muted" id="actions-empty">"No agent calls in this period."</p> }
            .into_any();
    }
    let max = series.iter().map(|b| b.allow + b.deny + b.error).max().unwrap_or(1).max(1) as f64;
    let plot_h = CHART_H - PAD_BOTTOM - 8.0;
    let step = CHART_W / series.len().max(1) as f64;
    let bar_w = (step * 0.7).max(1.0);
    let summary =
        format!("Actions over time: {} allowed, {} denied, {} errors.", totals.0, totals.1, totals.2);
    let bars = series
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let x = step * i as f64 + (step - bar_w) / 2.0;
            let mut base = CHART_H - PAD_BOTTOM;
            [("allow", b.allow), ("deny", b.deny), ("error", b.error)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(class, n)| {
                    let h = n as f64 / max * plot_h;
                    base -= h;
                    (class, x, base, h)
                })
                .collect::<Vec<_>>()
        })
        .map(|(class, x, y, h)| {
            view! {
                <rect class=format!("bar {class}") x=format!("{x:.1}") y=format!("{y:.1}")
                    width=format!("{bar_w:.1}") height=format!("{h:.1}")/>
            }
        })
        .collect_view();
    view! {
        <svg class="chart" id="actions-chart" viewBox=format!("0 0 {CHART_W} {CHART_H}") role="img"
            aria-labelledby="actions-chart-title" preserveAspectRatio="none">
            <title id="actions-chart-title">{summary}</title>
            <line x1="0" x2=CHART_W.to_string() y1=format!("{}", CHART_H - PAD_BOTTOM) y2=format!("{}", CHART_H - PAD_BOTTOM) class="baseline"/>
            {bars}
            {axis_labels(&series, range)}
        </svg>
        <ul class="legend" aria-hidden="true">
            <li><span class="swatch allow"></span>{format!("allowed {}", totals.0)}</li>
            <li><span class="swatch deny"></span>{format!("denied {}", totals.1)}</li>
            <li><span class="swatch error"></span>{format!("errors {}", totals.2)}</li>
        </ul>
        <table class="sr-only">
            <caption>"Actions per bucket"</caption>
            <thead><tr><th scope="col">"From"</th><th scope="col">"Allowed"</th><th scope="col">"Denied"</th><th scope="col">"Errors"</th></tr></thead>
            <tbody>
                {series.iter().filter(|b| b.allow + b.deny + b.error > 0).map(|b| view! {
                    <tr><td>{bucket_label(b, range)}</td><td>{b.allow}</td><td>{b.deny}</td><td>{b.error}</td></tr>
                }).collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

#[component]
fn TrustBars(tiers: Vec<TierCount>) -> impl IntoView {
    let max = tiers.iter().map(|t| t.count).max().unwrap_or(0).max(1);
    if tiers.iter().all(|t| t.count == 0) {
        return view! { <p class="empty muted">"No agents yet."</p> }.into_any();
    }
    view! {
        <ul class="tier-bars" id="trust-tiers">
            {tiers.into_iter().map(|t| {
                let pct = t.count * 100 / max;
                view! {
                    <li data-tier=t.tier.clone()>
                        <span class="tier-name">{t.tier.clone()}</span>
                        <span class="tier-track" aria-hidden="true">
                            <span class=format!("tier-fill {}", t.tier) style=format!("width: {pct}%")></span>
                        </span>
                        <span class="tier-count">{t.count}</span>
                    </li>
                }
            }).collect_view()}
        </ul>
    }
    .into_any()
}

#[component]
fn LatestEvents(records: Vec<AuditRecord>) -> impl IntoView {
    if records.is_empty() {
        return view! {
            <p class="empty muted">"Nothing has happened yet. Events appear here as your agents act."</p>
        }
        .into_any();
    }
    view! {
        <ul class="events" id="latest-events">
            {records.into_iter().map(|r| {
                let decision = r.decision.clone().unwrap_or_default();
                let target = match (&r.method, &r.host) {
                    (Some(m), Some(h)) => format!("{m} {h}{}", r.path.clone().unwrap_or_default()),
                    _ => String::new(),
                };
                view! {
                    <li>
                        <span class="muted small">{r.at.format("%m-%d %H:%M:%S").to_string()}</span>
                        " "<code>{r.kind.clone()}</code>
                        {(!decision.is_empty()).then(|| view! { " "<span class=format!("badge {decision}")>{decision.clone()}</span> })}
                        " "<span class="small">{target}</span>
                    </li>
                }
            }).collect_view()}
        </ul>
    }
    .into_any()
}
