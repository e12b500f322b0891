//! The status page as one server-rendered HTML document with inline CSS and SVG: nothing is
//! fetched from elsewhere (it works on an air-gapped network) and nothing runs in the
//! browser. Landmarks (header, nav, main, footer), one heading level per layer (regions h2,
//! probes h3, targets h4), figures in tables and text, never in colour alone; each of the 90
//! daily bars carries its date and figure in a `<title>` (hover) and an `aria-label`, and is
//! focusable (keyboard); the `<title>` is its accessible name. Colours meet WCAG AA: text at least 4.5:1, bars at least 3:1.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::badge::{latency_text, uptime_text};
use super::figures::{Day, Window};
use super::{Mode, ProbeView, RegionView, Snapshot, TargetView};

/// Text for HTML (and XML) content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{color-scheme:light;--fg:#1f2328;--muted:#57606a;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--none:#57606a;--line:#d0d7de}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:#fff}
a{color:#0550ae}
.skip{position:absolute;left:-9999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;outline:3px solid var(--fg)}
header,nav,main,footer{max-width:75rem;margin:0 auto;padding:0 1rem}
header{padding-top:1rem}
h1{font-size:1.6rem;margin:.25rem 0}
h2{font-size:1.35rem;border-bottom:1px solid var(--line);padding-bottom:.25rem;margin:2rem 0 .5rem}
h3{font-size:1.15rem;margin:1.25rem 0 .25rem}
h4{font-size:1rem;margin:0;overflow-wrap:anywhere}
p{margin:.25rem 0}
.muted,figcaption,.detail{color:var(--muted);font-size:.875rem}
.overall{font-size:1.15rem;font-weight:600}
nav ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.5rem 1.25rem}
.incidents{padding-left:1.25rem}
.targets{list-style:none;padding:0;margin:.5rem 0;display:grid;gap:1rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,22rem),1fr))}
.target{border:1px solid var(--line);border-radius:6px;padding:.75rem}
.state{font-weight:600}
.state::before{content:"";display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.4em;background:currentColor}
.s-ok{color:var(--ok)}.s-bad{color:var(--bad)}.s-none{color:var(--none)}
.kind{font-weight:400;font-size:.8rem;border:1px solid var(--muted);border-radius:3px;padding:0 .3em;margin-left:.3em;color:var(--muted);text-transform:uppercase}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.875rem;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:.125rem .375rem;border-bottom:1px solid var(--line)}
th:first-child{text-align:left}
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
figure{margin:.5rem 0 0}
svg.bars{width:100%;height:2rem;display:block}
.bars rect:focus,.bars rect:hover{outline:none;stroke:var(--fg);stroke-width:2}
.b-ok{fill:var(--ok)}.b-warn{fill:var(--warn)}.b-bad{fill:var(--bad)}.b-none{fill:#8c959f}
footer{padding-bottom:2rem}
"#;

fn time(at: DateTime<Utc>) -> String {
    format!(
        r#"<time datetime="{}">{}</time>"#,
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

fn time_text(rfc3339: &str) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(at) => time(at.with_timezone(&Utc)),
        Err(_) => escape(rfc3339),
    }
}

/// The state class and word of a target's state or a probe's health.
fn state_class(word: &str) -> &'static str {
    match word {
        "Healthy" => "s-ok",
        "Breaching" | "Degraded" | "RegionNotFound" | "InvalidSpec" => "s-bad",
        _ => "s-none",
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{} %", uptime_text(v)))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{} ms", latency_text(v)))
}

fn loss(v: Option<f64>) -> String {
    v.map_or_else(
        || "–".to_owned(),
        |v| format!("{} %", (v * 100.0).round() / 100.0),
    )
}

fn region_title(r: &RegionView) -> String {
    let mut title = escape(r.display_name.as_deref().unwrap_or(&r.name));
    if let Some(country) = r.country.as_deref().filter(|c| !c.is_empty()) {
        let _ = write!(title, " ({})", escape(country));
    }
    title
}

/// Ids for headings and captions, unique in the page whatever the names hold.
#[derive(Default)]
struct Ids(usize);

impl Ids {
    fn next(&mut self, prefix: &str) -> String {
        self.0 += 1;
        format!("{prefix}{}", self.0)
    }
}

/// The whole page.
pub fn page(s: &Snapshot) -> String {
    let targets: Vec<(&RegionView, &ProbeView, &TargetView)> = s
        .regions
        .iter()
        .flat_map(|r| r.probes.iter().map(move |p| (r, p)))
        .flat_map(|(r, p)| p.targets.iter().map(move |t| (r, p, t)))
        .collect();
    let healthy = targets
        .iter()
        .filter(|(_, _, t)| t.state == "Healthy")
        .count();
    let incidents: Vec<_> = targets
        .iter()
        .filter(|(_, _, t)| t.state == "Breaching" || t.state == "NoData")
        .collect();

    // About 9 kB a target: mostly its 90 bars.
    let mut out = String::with_capacity(16_384 + targets.len() * 9_500);
    out.push_str(r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>FiberStack status</title><style>"#);
    out.push_str(STYLE);
    out.push_str("</style></head><body>");
    out.push_str(r##"<a class="skip" href="#main">Skip to the regions</a><header><h1>FiberStack status</h1>"##);
    let overall = if incidents.is_empty() {
        ("s-ok", format!("All {} targets healthy", targets.len()))
    } else {
        (
            "s-bad",
            format!(
                "{} of {} targets healthy; {} incident{}",
                healthy,
                targets.len(),
                incidents.len(),
                if incidents.len() == 1 { "" } else { "s" }
            ),
        )
    };
    let _ = write!(
        out,
        r#"<p class="overall state {}">{}</p><p class="muted">Page updated {}, every {} s. Figures: 15 min from the probes' status; 24 h, 7 d and 30 d from the hourly and daily rollups{}.</p></header>"#,
        overall.0,
        overall.1,
        time(s.generated_at),
        s.refresh_every.as_secs(),
        if s.mode == Some(Mode::Public) {
            ""
        } else {
            " · internal view"
        }
    );

    out.push_str(r#"<nav aria-label="Regions"><ul>"#);
    let mut ids = Ids::default();
    let region_ids: Vec<String> = s.regions.iter().map(|_| ids.next("region-")).collect();
    for (r, id) in s.regions.iter().zip(&region_ids) {
        let _ = write!(out, r##"<li><a href="#{id}">{}</a></li>"##, region_title(r));
    }
    out.push_str("</ul></nav><main id=\"main\">");

    out.push_str(
        r#"<section aria-labelledby="incidents"><h2 id="incidents">Current incidents</h2>"#,
    );
    if incidents.is_empty() {
        out.push_str("<p>None: every target with data is within its thresholds.</p>");
    } else {
        out.push_str(r#"<ul class="incidents">"#);
        for (r, p, t) in &incidents {
            let _ = write!(
                out,
                r#"<li><strong>{} / {} / {}</strong>: <span class="state {}">{}</span>{}</li>"#,
                region_title(r),
                escape(&p.name),
                escape(&t.name),
                state_class(&t.state),
                escape(&t.state),
                t.reason
                    .as_deref()
                    .map(|m| format!(" — {}", escape(m)))
                    .unwrap_or_default(),
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");

    for (r, id) in s.regions.iter().zip(&region_ids) {
        region(&mut out, r, id, &mut ids);
    }
    if !s.problems.is_empty() {
        out.push_str(
            r#"<section aria-labelledby="problems"><h2 id="problems">Refresh problems</h2><ul>"#,
        );
        for p in &s.problems {
            let _ = write!(out, "<li>{}</li>", escape(p));
        }
        out.push_str("</ul></section>");
    }
    out.push_str(r#"</main><footer><p class="muted">Bars: one a UTC day, oldest left; green when the day's uptime meets the target's threshold, amber within 5 points of it, red below, grey without samples. The p95 of 24 h, 7 d and 30 d is read from latency histograms merged over the window (bins 2 % wide). Served by fiberstack-operator.</p></footer></body></html>"#);
    out
}

fn region(out: &mut String, r: &RegionView, id: &str, ids: &mut Ids) {
    let _ = write!(
        out,
        r#"<section id="{id}" aria-labelledby="{id}-h"><h2 id="{id}-h">{}</h2>"#,
        region_title(r)
    );
    let _ = write!(
        out,
        r#"<p class="muted">Region {}/{}{}</p>"#,
        escape(&r.namespace),
        escape(&r.name),
        if r.exists {
            ""
        } else {
            " — no FiberRegion of this name exists"
        }
    );
    if let Some(url) = &r.ingest_url {
        let _ = write!(out, r#"<p class="detail">Ingest: {}</p>"#, escape(url));
    }
    for m in &r.messages {
        let _ = write!(out, r#"<p class="detail">{}</p>"#, escape(m));
    }
    if r.probes.is_empty() {
        out.push_str("<p>No probes shown in this region.</p>");
    }
    for p in &r.probes {
        probe(out, p, ids);
    }
    out.push_str("</section>");
}

fn probe(out: &mut String, p: &ProbeView, ids: &mut Ids) {
    let id = ids.next("probe-");
    let _ = write!(
        out,
        r#"<article aria-labelledby="{id}"><h3 id="{id}">Probe {} <span class="state {}">{}</span></h3>"#,
        escape(&p.name),
        state_class(&p.health),
        escape(&p.health),
    );
    let _ = write!(
        out,
        r#"<p class="muted">{}/{} · pods ready {} · nodes reporting {} · last sample {}{}</p>"#,
        escape(&p.namespace),
        escape(&p.name),
        escape(if p.ready.is_empty() { "–" } else { &p.ready }),
        p.reporting_probes,
        p.last_sample
            .as_deref()
            .map_or_else(|| "never".to_owned(), time_text),
        p.windows
            .newest_bucket
            .map(|b| format!(" · newest hourly rollup {}", time(b)))
            .unwrap_or_default(),
    );
    if let Some(note) = &p.visibility_note {
        let _ = write!(out, r#"<p class="detail">{}</p>"#, escape(note));
    }
    for m in &p.messages {
        let _ = write!(out, r#"<p class="detail">{}</p>"#, escape(m));
    }
    out.push_str(r#"<ul class="targets">"#);
    for t in &p.targets {
        target(out, t, ids);
    }
    out.push_str("</ul></article>");
}

fn figures_row(out: &mut String, label: &str, w: &Window) {
    let _ = write!(
        out,
        r#"<tr><th scope="row">{label}</th><td>{}</td><td>{}</td><td>{}</td></tr>"#,
        pct(w.uptime_pct),
        ms(w.latency_p95_ms),
        loss(w.packet_loss_pct)
    );
}

fn target(out: &mut String, t: &TargetView, ids: &mut Ids) {
    let id = ids.next("target-");
    let _ = write!(
        out,
        r#"<li class="target" aria-labelledby="{id}"><h4 id="{id}">{}<span class="kind">{}</span></h4><p class="state {}">{}</p>"#,
        escape(&t.name),
        escape(&t.kind),
        state_class(&t.state),
        escape(&t.state),
    );
    if let Some(reason) = &t.reason {
        let _ = write!(out, r#"<p class="reason">{}</p>"#, escape(reason));
    }
    let mut details = Vec::new();
    if let Some(a) = &t.address {
        details.push(format!("address {}", escape(a)));
    }
    if !t.vantage_points.is_empty() {
        details.push(format!(
            "seen from {}",
            escape(&t.vantage_points.join(", "))
        ));
    }
    if !t.silent.is_empty() {
        details.push(format!("silent nodes {}", escape(&t.silent.join(", "))));
    }
    if !details.is_empty() {
        let _ = write!(out, r#"<p class="detail">{}</p>"#, details.join(" · "));
    }
    let _ = write!(
        out,
        r#"<table><caption class="vh">Figures of {}</caption><thead><tr><th scope="col">Window</th><th scope="col">Uptime</th><th scope="col">p95</th><th scope="col">Loss</th></tr></thead><tbody>"#,
        escape(&t.name)
    );
    figures_row(
        out,
        "15 min",
        &Window {
            samples: t.now.samples,
            uptime_pct: t.now.uptime_pct,
            latency_p95_ms: t.now.latency_p95_ms,
            packet_loss_pct: t.now.packet_loss_pct,
        },
    );
    figures_row(out, "24 h", &t.windows.day);
    figures_row(out, "7 d", &t.windows.week);
    figures_row(out, "30 d", &t.windows.month);
    out.push_str("</tbody></table>");
    bars(out, t, &id);
    out.push_str("</li>");
}

/// The colour class of a day's bar, judged against the target's uptime threshold.
fn bar_class(day: &Day, threshold: f64) -> &'static str {
    match day.uptime_pct {
        None => "b-none",
        Some(v) if v >= threshold => "b-ok",
        Some(v) if v >= threshold - 5.0 => "b-warn",
        Some(_) => "b-bad",
    }
}

fn day_text(day: &Day) -> String {
    match day.uptime_pct {
        Some(v) => format!(
            "{}: uptime {} % ({} samples)",
            day.date,
            uptime_text(v),
            day.samples
        ),
        None => format!("{}: no samples", day.date),
    }
}

fn bars(out: &mut String, t: &TargetView, id: &str) {
    let with_data: Vec<&Day> = t.days.iter().filter(|d| d.uptime_pct.is_some()).collect();
    let below = with_data
        .iter()
        .filter(|d| d.uptime_pct.is_some_and(|v| v < t.thresholds.uptime_pct))
        .count();
    let worst = with_data.iter().min_by(|a, b| {
        a.uptime_pct
            .partial_cmp(&b.uptime_pct)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let caption = match worst {
        None => format!("{} days: no daily figures yet.", t.days.len()),
        Some(w) => format!(
            "{} days: {} with samples, {} below {} %; lowest {}.",
            t.days.len(),
            with_data.len(),
            below,
            uptime_text(t.thresholds.uptime_pct),
            escape(&day_text(w))
        ),
    };
    let width = t.days.len() * 5;
    let _ = write!(
        out,
        r#"<figure><svg class="bars" role="group" aria-labelledby="{id}-days" viewBox="0 0 {width} 30" preserveAspectRatio="none">"#
    );
    for (i, day) in t.days.iter().enumerate() {
        let text = escape(&day_text(day));
        let _ = write!(
            out,
            r#"<rect x="{}" width="4" height="30" class="{}" role="img"{}><title>{text}</title></rect>"#,
            i * 5,
            bar_class(day, t.thresholds.uptime_pct),
            if day.uptime_pct.is_some() {
                r#" tabindex="0""#
            } else {
                ""
            },
        );
    }
    let _ = write!(
        out,
        r#"</svg><figcaption id="{id}-days">Daily uptime, {caption}</figcaption></figure>"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_cluster_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_days_bar_is_judged_against_the_threshold() {
        let day = |v| Day {
            date: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            samples: 1,
            uptime_pct: v,
        };
        assert_eq!(bar_class(&day(Some(99.5)), 99.0), "b-ok");
        assert_eq!(bar_class(&day(Some(95.0)), 99.0), "b-warn");
        assert_eq!(bar_class(&day(Some(50.0)), 99.0), "b-bad");
        assert_eq!(bar_class(&day(None), 99.0), "b-none");
    }
}
