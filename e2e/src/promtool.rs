//! promtool (Debian's `prometheus` package, which `make env-up` installs): the linter of every
//! binary's `/metrics`, and the checker and unit-test runner of the chart's alerting rules.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Fails with promtool's complaints unless `promtool check metrics` finds nothing wrong in a
/// `/metrics` text: HELP on every family, counters named `_total`, base units and the like.
/// promtool reads the classic text format only, which every binary serves to a scrape that
/// does not ask for OpenMetrics (`fiberstack_plumbing::metrics::exposition`).
pub fn check_metrics(text: &str) -> Result<()> {
    promtool(&["check", "metrics"], &[], Some(text))
        .map(drop)
        .with_context(|| format!("promtool check metrics, on this text:\n{text}"))
}

/// `promtool check rules` on rule files (each `groups:` of a PrometheusRule's spec): syntax,
/// expressions, templates. Returns what promtool said.
pub fn check_rules(files: &[&Path]) -> Result<String> {
    promtool(&["check", "rules"], files, None)
}

/// `promtool test rules` on rule unit-test files: every alert each test case expects, and
/// only those, fires at its `eval_time`. Returns what promtool said.
pub fn test_rules(files: &[&Path]) -> Result<String> {
    promtool(&["test", "rules"], files, None)
}

fn promtool(args: &[&str], files: &[&Path], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .args(files)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool: install Debian's `prometheus` package (`make env-up` does)")?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .context("writing to promtool")?;
    }
    let output = child.wait_with_output().context("waiting for promtool")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!(
            "promtool {} {} failed ({}):\n{said}",
            args.join(" "),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            output.status
        );
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lint_problem_fails_and_names_the_metric() {
        let clean = "# HELP demo_sent_total Things sent.\n# TYPE demo_sent_total counter\ndemo_sent_total 1\n";
        check_metrics(clean).unwrap();
        let unsuffixed = "# HELP demo_sent Things sent.\n# TYPE demo_sent counter\ndemo_sent 1\n";
        let e = format!("{:#}", check_metrics(unsuffixed).unwrap_err());
        assert!(e.contains("demo_sent") && e.contains("_total"), "{e}");
        let no_help = "# TYPE demo_queued gauge\ndemo_queued 1\n";
        let e = format!("{:#}", check_metrics(no_help).unwrap_err());
        assert!(e.contains("no help text"), "{e}");
    }
}
