//! What each kind of receiver is sent for one alert in one state. Pure.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::crd::{Alert, AlertState};

/// Everything a notification says about an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject<'a> {
    pub namespace: &'a str,
    pub probe: &'a str,
    pub region: &'a str,
    /// The target's check kind (icmp, http, …).
    pub kind: &'a str,
    pub alert: &'a Alert,
    /// The state being announced (an alert's end is announced as Resolved).
    pub state: AlertState,
    /// `--alert-link` with its placeholders filled, when set.
    pub link: Option<String>,
}

/// The alertname every FiberStack target alert carries in Alertmanager.
pub const ALERTNAME: &str = "FiberTargetBreaching";
/// The alertname of a FiberProbe's SLO burn alert (its target label is "slo").
pub const SLO_ALERTNAME: &str = "FiberSloBurning";
/// The alertname of a node's path change to a traceroute target (label node besides
/// target); it fires for the target's changeAlertFor after the change, then resolves.
pub const PATH_ALERTNAME: &str = "FiberPathChanged";

/// `POST /api/v2/alerts` body. While firing, `endsAt` lies `hold` ahead: Alertmanager
/// resolves the alert by itself if the operator stops re-sending (as Prometheus does, at 4×
/// its resend interval); a resolved alert's `endsAt` is its end.
pub fn alertmanager(s: &Subject, now: DateTime<Utc>, hold: std::time::Duration) -> Value {
    let ends_at = match s.state {
        AlertState::Resolved => s.alert.ends_at.clone().unwrap_or_else(|| stamp(now)),
        _ => stamp(now + chrono::Duration::from_std(hold).unwrap_or_default()),
    };
    let alertname = match (&s.alert.burn, &s.alert.node) {
        (Some(_), _) => SLO_ALERTNAME,
        (None, Some(_)) => PATH_ALERTNAME,
        (None, None) => ALERTNAME,
    };
    let mut alert = json!({
        "labels": {
            "alertname": alertname,
            // A path change is news, not an outage: what it does to latency and loss has
            // its own alert.
            "severity": if s.alert.node.is_some() { "info" } else { "warning" },
            "namespace": s.namespace,
            "probe": s.probe,
            "region": s.region,
            "target": s.target(),
            "kind": s.kind,
            "scope": s.scope_word(),
        },
        "annotations": {
            "summary": s.summary(),
            "description": s.alert.reason,
            "fiberstack_id": s.alert.id,
            "vantage_points": s.alert.vantage_points.join(", "),
        },
        "startsAt": s.alert.starts_at,
        "endsAt": ends_at,
    });
    if let Some(node) = &s.alert.node {
        alert["labels"]["node"] = json!(node);
    }
    if let Some(link) = &s.link {
        alert["generatorURL"] = json!(link);
    }
    json!([alert])
}

/// The generic webhook's body: one flat object per start and end.
pub fn webhook(s: &Subject) -> Value {
    let mut body = json!({
        "version": "1",
        "id": s.alert.id,
        "status": s.status_word(),
        "namespace": s.namespace,
        "probe": s.probe,
        "region": s.region,
        "target": s.target(),
        "kind": s.kind,
        "reason": s.alert.reason,
        "scope": s.scope_word(),
        "vantagePoints": s.alert.vantage_points,
        "startsAt": s.alert.starts_at,
        "endsAt": s.alert.ends_at,
        "link": s.link,
    });
    if let Some(node) = &s.alert.node {
        body["node"] = json!(node);
    }
    body
}

/// A Slack incoming webhook's body: one line of text, with the link when there is one.
pub fn slack(s: &Subject) -> Value {
    let icon = match s.state {
        AlertState::Resolved => ":large_green_circle:",
        _ => ":red_circle:",
    };
    let mut text = format!(
        "{icon} *{}* {}: {}",
        s.status_word().to_uppercase(),
        s.summary(),
        s.alert.reason
    );
    if let Some(link) = &s.link {
        text.push_str(&format!(" <{link}|details>"));
    }
    json!({ "text": text })
}

/// The webhook's Idempotency-Key header: the same for every retry of one notification.
pub fn idempotency_key(s: &Subject) -> String {
    format!("{}/{}", s.alert.id, s.status_word())
}

impl Subject<'_> {
    /// everywhere, partial or single ("" when not known).
    fn scope_word(&self) -> String {
        self.alert
            .scope
            .map(|s| s.as_str().to_lowercase())
            .unwrap_or_default()
    }

    fn target(&self) -> &str {
        &self.alert.target
    }

    fn status_word(&self) -> &'static str {
        match self.state {
            AlertState::Resolved => "resolved",
            _ => "firing",
        }
    }

    fn summary(&self) -> String {
        if let Some(node) = &self.alert.node {
            return format!(
                "the path from node {node} to target {} of FiberProbe {}/{} (region {}) {}",
                self.alert.target,
                self.namespace,
                self.probe,
                self.region,
                match self.state {
                    AlertState::Resolved => "changed a while ago (alert expired)",
                    _ => "changed",
                }
            );
        }
        if let Some(burn) = &self.alert.burn {
            // A target's own slo (spec.targets[].slo) names the target.
            let whose = if crate::controller::probe::alerts::is_burn_of(
                self.alert,
                self.namespace,
                self.probe,
                Some(&self.alert.target),
            ) {
                format!("target {} of ", self.alert.target)
            } else {
                String::new()
            };
            return format!(
                "the SLO of {whose}FiberProbe {}/{} (region {}) {}",
                self.namespace,
                self.probe,
                self.region,
                match self.state {
                    AlertState::Resolved => "no longer burns its error budget fast".to_owned(),
                    _ => format!("burns its error budget {}", burn.as_str().to_lowercase()),
                }
            );
        }
        format!(
            "target {} of FiberProbe {}/{} (region {}) {}",
            self.alert.target,
            self.namespace,
            self.probe,
            self.region,
            match self.state {
                AlertState::Resolved => "is within its thresholds again",
                _ => "breaches its thresholds",
            }
        )
    }
}

/// `--alert-link` with `{namespace}`, `{probe}`, `{region}` and `{target}` filled in.
pub fn link(template: &str, namespace: &str, probe: &str, region: &str, target: &str) -> String {
    template
        .replace("{namespace}", namespace)
        .replace("{probe}", probe)
        .replace("{region}", region)
        .replace("{target}", target)
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alert(state: AlertState) -> Alert {
        Alert {
            id: "ns/edge/dns@1800000000".into(),
            target: "dns".into(),
            state,
            reason: "packet loss 30 % > 2 %".into(),
            starts_at: "2027-01-15T08:00:00Z".into(),
            ends_at: (state == AlertState::Resolved).then(|| "2027-01-15T09:00:00Z".into()),
            scope: Some(crate::crd::Scope::Partial),
            vantage_points: vec!["ghana/gh-accra-1".into()],
            ..Default::default()
        }
    }

    fn subject(alert: &Alert) -> Subject<'_> {
        Subject {
            namespace: "ns",
            probe: "edge",
            region: "ghana",
            kind: "icmp",
            alert,
            state: alert.state,
            link: Some("https://grafana.example/d/t?var-target=dns".into()),
        }
    }

    #[test]
    fn alertmanager_gets_labels_and_an_end_ahead_while_firing() {
        let a = alert(AlertState::Firing);
        let now = Utc.with_ymd_and_hms(2027, 1, 15, 8, 30, 0).unwrap();
        let body = alertmanager(&subject(&a), now, std::time::Duration::from_secs(240));
        let one = &body[0];
        assert_eq!(one["labels"]["alertname"], ALERTNAME);
        assert_eq!(one["labels"]["target"], "dns");
        assert_eq!(one["labels"]["region"], "ghana");
        assert_eq!(one["labels"]["kind"], "icmp");
        assert_eq!(one["labels"]["scope"], "partial");
        assert_eq!(one["annotations"]["vantage_points"], "ghana/gh-accra-1");
        assert_eq!(one["startsAt"], "2027-01-15T08:00:00Z");
        assert_eq!(one["endsAt"], "2027-01-15T08:34:00Z");
        assert_eq!(
            one["annotations"]["fiberstack_id"],
            "ns/edge/dns@1800000000"
        );
        assert_eq!(
            one["generatorURL"],
            "https://grafana.example/d/t?var-target=dns"
        );
        let r = alert(AlertState::Resolved);
        let body = alertmanager(&subject(&r), now, std::time::Duration::from_secs(240));
        assert_eq!(body[0]["endsAt"], "2027-01-15T09:00:00Z");
    }

    #[test]
    fn a_path_change_alert_has_its_name_and_node() {
        let a = Alert {
            node: Some("gh-accra-1".into()),
            ..alert(AlertState::Firing)
        };
        let now = Utc.with_ymd_and_hms(2027, 1, 15, 8, 30, 0).unwrap();
        let body = alertmanager(&subject(&a), now, std::time::Duration::from_secs(240));
        let labels = &body[0]["labels"];
        assert_eq!(labels["alertname"], PATH_ALERTNAME);
        assert_eq!(labels["node"], "gh-accra-1");
        assert_eq!(labels["target"], "dns");
        assert_eq!(labels["severity"], "info");
        let target = alertmanager(
            &subject(&alert(AlertState::Firing)),
            now,
            std::time::Duration::from_secs(240),
        );
        assert!(target[0]["labels"].get("node").is_none());
        let text = slack(&subject(&a))["text"].as_str().unwrap().to_owned();
        assert!(
            text.contains("the path from node gh-accra-1 to target dns of FiberProbe ns/edge"),
            "{text}"
        );
    }

    #[test]
    fn webhook_and_slack_say_the_state_and_the_key_stays_per_state() {
        let a = alert(AlertState::Firing);
        let w = webhook(&subject(&a));
        assert_eq!(w["status"], "firing");
        assert_eq!(w["id"], "ns/edge/dns@1800000000");
        assert_eq!(w["reason"], "packet loss 30 % > 2 %");
        assert_eq!(w["scope"], "partial");
        assert_eq!(w["vantagePoints"], serde_json::json!(["ghana/gh-accra-1"]));
        assert_eq!(
            idempotency_key(&subject(&a)),
            "ns/edge/dns@1800000000/firing"
        );
        let text = slack(&subject(&a))["text"].as_str().unwrap().to_owned();
        assert!(
            text.starts_with(
                ":red_circle: *FIRING* target dns of FiberProbe ns/edge (region ghana)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("<https://grafana.example/d/t?var-target=dns|details>"),
            "{text}"
        );
        let r = alert(AlertState::Resolved);
        assert_eq!(webhook(&subject(&r))["status"], "resolved");
        assert_eq!(webhook(&subject(&r))["endsAt"], "2027-01-15T09:00:00Z");
        assert!(
            slack(&subject(&r))["text"]
                .as_str()
                .unwrap()
                .contains("*RESOLVED*")
        );
    }

    #[test]
    fn the_link_template_is_filled() {
        assert_eq!(
            link(
                "https://g/d/x?var-probe={namespace}/{probe}&var-target={target}&r={region}",
                "ns",
                "p",
                "gh",
                "t"
            ),
            "https://g/d/x?var-probe=ns/p&var-target=t&r=gh"
        );
    }
}
