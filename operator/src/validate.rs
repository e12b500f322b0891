//! Validate step of the pipelines: every rule a spec breaks, reported together. The CRDs' own
//! rules refuse most of them at the API server already; what they cannot see (the region, a
//! rule CEL cannot express exactly) and objects stored under an older CRD end here.

use std::fmt;

use fiberstack_model::ValidationError;
use kube::ResourceExt;

use crate::crd::{FiberProbe, FiberRegion};
use crate::render::{names, probe};

/// Longest name whose derived object names and label values stay within 63 characters.
pub const MAX_REGION_NAME_LEN: usize = 63 - "fiberstack-ingest-".len();
pub const MAX_PROBE_NAME_LEN: usize = 63;

/// Every rule a spec breaks, each naming its field: the InvalidSpec condition lists them all,
/// so that one edit can fix them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<ValidationError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The probe and its region agree, and the configuration they make is one the probe accepts.
pub fn validate_probe(p: &FiberProbe, region: &FiberRegion) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    let name = p.name_any();
    if name.len() > MAX_PROBE_NAME_LEN {
        problems.push(ValidationError::new(
            "metadata.name",
            format!(
                "{name:?} is {} characters long; at most {MAX_PROBE_NAME_LEN} fit in a label",
                name.len()
            ),
        ));
    }
    for (key, value) in &p.spec.node_selector {
        if let Some(theirs) = region.spec.node_selector.get(key)
            && theirs != value
        {
            problems.push(ValidationError::new(
                format!("spec.nodeSelector[{key:?}]"),
                format!(
                    "{value:?} conflicts with {theirs:?} in the nodeSelector of FiberRegion {}; no node can match both",
                    region.name_any()
                ),
            ));
        }
    }
    problems.extend(
        probe::probe_config(p, region)
            .problems()
            .into_iter()
            .map(|e| e.within("spec")),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

pub fn validate_region(region: &FiberRegion) -> Result<(), ValidationError> {
    let name = region.name_any();
    let dns_label = name.len() <= MAX_REGION_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !dns_label {
        return Err(ValidationError::new(
            "metadata.name",
            format!(
                "{name:?} cannot name the ingest Service {:?}: use at most {MAX_REGION_NAME_LEN} lower-case letters, digits and '-', starting with a letter",
                names::ingest(&name)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{probe, region};

    /// The one problem `p` has.
    fn only_problem(p: &FiberProbe) -> ValidationError {
        let Invalid(mut problems) = validate_probe(p, &region()).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems.remove(0)
    }

    #[test]
    fn a_selector_conflict_names_the_key_and_both_values() {
        let mut p = probe();
        p.spec
            .node_selector
            .insert("topology.kubernetes.io/region".into(), "ng".into());
        let e = only_problem(&p);
        assert_eq!(
            e.field,
            "spec.nodeSelector[\"topology.kubernetes.io/region\"]"
        );
        assert!(e.message.contains("\"ng\" conflicts with \"gh\""), "{e}");
    }

    #[test]
    fn model_rules_are_reported_under_spec() {
        let mut p = probe();
        p.spec.targets[0].icmp.as_mut().unwrap().count = 500;
        let Invalid(problems) = validate_probe(&p, &region()).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|e| e.field.as_str()).collect();
        // 500 echoes do not fit in the interval either.
        assert_eq!(
            fields,
            ["spec.targets[0].icmp.count", "spec.targets[0].icmp.spacing"]
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let mut p = probe();
        p.metadata.name = Some("p".repeat(64));
        p.spec
            .node_selector
            .insert("topology.kubernetes.io/region".into(), "ng".into());
        p.spec.targets[0].icmp.as_mut().unwrap().count = 0;
        p.spec.targets[0].icmp.as_mut().unwrap().host = "a b".into();
        let e = validate_probe(&p, &region()).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.nodeSelector[\"topology.kubernetes.io/region\"]",
                "spec.targets[0].icmp.host",
                "spec.targets[0].icmp.count",
            ]
        );
        // One message, each problem in turn.
        let message = e.to_string();
        let mut rest = message.as_str();
        for problem in &e.0 {
            let text = problem.to_string();
            let at = rest
                .find(&text)
                .unwrap_or_else(|| panic!("{text:?} in {message:?}"));
            rest = &rest[at + text.len()..];
        }
        assert!(
            message.starts_with("metadata.name: ")
                && message
                    .ends_with("spec.targets[0].icmp.count: 0 is out of range, expected 1 to 100"),
            "{message}"
        );
    }

    #[test]
    fn region_names_must_fit_a_service_name() {
        let mut r = region();
        assert!(validate_region(&r).is_ok());
        r.metadata.name = Some("Ghana".into());
        assert!(
            validate_region(&r)
                .unwrap_err()
                .message
                .contains("lower-case")
        );
        r.metadata.name = Some("g".repeat(46));
        assert!(validate_region(&r).is_err());
    }
}
