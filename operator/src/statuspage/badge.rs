//! Shields-style SVG badges ("uptime 30d | 99.95%", "p95 24h | 23 ms") of a probe or one of
//! its targets, for README files and wikis. Self-contained SVG: system fonts, no links.

use super::Snapshot;
use super::figures::Window;
use super::html::escape;

/// What a badge shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Uptime,
    Latency,
}

/// Over which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Day,
    Week,
    Month,
}

impl Span {
    fn label(self) -> &'static str {
        match self {
            Span::Day => "24h",
            Span::Week => "7d",
            Span::Month => "30d",
        }
    }
}

/// A badge request, read from the path's last segment and `?window=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub metric: Metric,
    pub span: Span,
}

impl Request {
    /// `metric`: `uptime.svg` or `latency.svg`; `window`: `24h` (default), `7d` or `30d`. The
    /// error names the part, the value and what is accepted.
    pub fn parse(metric: &str, window: Option<&str>) -> Result<Self, String> {
        let metric = match metric {
            "uptime.svg" => Metric::Uptime,
            "latency.svg" => Metric::Latency,
            other => {
                return Err(format!(
                    "badge {other:?}: the last path segment must be uptime.svg or latency.svg"
                ));
            }
        };
        let span = match window.unwrap_or("24h") {
            "24h" => Span::Day,
            "7d" => Span::Week,
            "30d" => Span::Month,
            other => {
                return Err(format!(
                    "window={other:?}: accepted windows are 24h, 7d and 30d"
                ));
            }
        };
        Ok(Self { metric, span })
    }

    fn label(self) -> String {
        match self.metric {
            Metric::Uptime => format!("uptime {}", self.span.label()),
            Metric::Latency => format!("p95 {}", self.span.label()),
        }
    }
}

/// Colours with white text at WCAG AA contrast (at least 4.5:1).
const GREEN: &str = "#1a7f37";
const RED: &str = "#cf222e";
const GREY: &str = "#57606a";
const LABEL: &str = "#24292f";

/// The badge of `namespace/probe` (or of its `target`), None when the snapshot has no such
/// probe or target.
pub fn render(
    snapshot: &Snapshot,
    namespace: &str,
    probe: &str,
    target: Option<&str>,
    request: Request,
) -> Option<String> {
    let probe = snapshot.probe(namespace, probe)?;
    let (windows, thresholds) = match target {
        Some(name) => {
            let t = probe.targets.iter().find(|t| t.name == name)?;
            (t.windows, t.thresholds.clone())
        }
        None => {
            // A probe is judged by its strictest target's limits.
            let mut strictest = probe.targets.first().map(|t| t.thresholds.clone())?;
            for t in &probe.targets {
                strictest.latency_p95_ms =
                    strictest.latency_p95_ms.min(t.thresholds.latency_p95_ms);
                strictest.uptime_pct = strictest.uptime_pct.max(t.thresholds.uptime_pct);
            }
            (probe.windows, strictest)
        }
    };
    let window: Window = match request.span {
        Span::Day => windows.day,
        Span::Week => windows.week,
        Span::Month => windows.month,
    };
    let (value, colour) = match request.metric {
        Metric::Uptime => match window.uptime_pct {
            Some(v) => (
                format!("{}%", uptime_text(v)),
                if v >= thresholds.uptime_pct {
                    GREEN
                } else {
                    RED
                },
            ),
            None => ("no data".to_owned(), GREY),
        },
        Metric::Latency => match window.latency_p95_ms {
            Some(v) => (
                format!("{} ms", latency_text(v)),
                if v <= thresholds.latency_p95_ms {
                    GREEN
                } else {
                    RED
                },
            ),
            None => ("no data".to_owned(), GREY),
        },
    };
    Some(svg(&request.label(), &value, colour))
}

/// The badge of a probe or target that is not on the page.
pub fn not_found(request: Request) -> String {
    svg(&request.label(), "not found", GREY)
}

/// Uptime with as many decimals as tell 99.95 % from 100 %: never rounded up to 100.
pub fn uptime_text(v: f64) -> String {
    if v >= 100.0 {
        "100".to_owned()
    } else {
        let floor = (v * 100.0).floor() / 100.0;
        let text = format!("{floor:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Latency in whole milliseconds, or with one decimal under 10 ms.
pub fn latency_text(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Width of `text` in Verdana 11px, as shields.io estimates it (average advance per glyph).
fn text_width(text: &str) -> u32 {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | '.' | ',' | ':' | '|' | '!' | '\'' => 3.5,
            ' ' | 'f' | 'j' | 'r' | 't' | '(' | ')' | '[' | ']' => 4.5,
            'm' | 'w' | 'M' | 'W' | '%' => 10.5,
            c if c.is_ascii_uppercase() || c.is_ascii_digit() => 7.2,
            _ => 6.8,
        })
        .sum::<f64>()
        .ceil() as u32
}

fn svg(label: &str, value: &str, colour: &str) -> String {
    let (lw, vw) = (text_width(label) + 10, text_width(value) + 10);
    let total = lw + vw;
    let (label, value) = (escape(label), escape(value));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{label}: {value}"><title>{label}: {value}</title><rect width="{lw}" height="20" fill="{LABEL}"/><rect x="{lw}" width="{vw}" height="20" fill="{colour}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{label}</text><text x="{vx}" y="14">{value}</text></g></svg>"##,
        lx = f64::from(lw) / 2.0,
        vx = f64::from(lw) + f64::from(vw) / 2.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_and_bad_ones_named() {
        assert_eq!(
            Request::parse("uptime.svg", Some("30d")),
            Ok(Request {
                metric: Metric::Uptime,
                span: Span::Month
            })
        );
        let e = Request::parse("latency.svg", Some("1y")).unwrap_err();
        assert!(
            e.contains("window=\"1y\"") && e.contains("24h, 7d and 30d"),
            "{e}"
        );
        let e = Request::parse("loss.svg", None).unwrap_err();
        assert!(
            e.contains("\"loss.svg\"") && e.contains("uptime.svg or latency.svg"),
            "{e}"
        );
    }

    #[test]
    fn uptime_is_never_rounded_up_to_a_hundred() {
        assert_eq!(uptime_text(99.999), "99.99");
        assert_eq!(uptime_text(99.5), "99.5");
        assert_eq!(uptime_text(100.0), "100");
        assert_eq!(latency_text(4.26), "4.3");
        assert_eq!(latency_text(412.4), "412");
    }
}
