//! Validate step of the pipelines: what the API server's schema cannot check, because it
//! involves another object (the region) or rules shared with the probe agent.

use fiberstack_model::ValidationError;
use kube::ResourceExt;

use crate::crd::{FiberProbe, FiberRegion};
use crate::render::{names, probe};

/// Longest name whose derived object names and label values stay within 63 characters.
pub const MAX_REGION_NAME_LEN: usize = 63 - "fiberstack-ingest-".len();
pub const MAX_PROBE_NAME_LEN: usize = 63;

/// The probe and its region agree, and the configuration they make is one the probe accepts.
pub fn validate_probe(p: &FiberProbe, region: &FiberRegion) -> Result<(), ValidationError> {
    let name = p.name_any();
    if name.len() > MAX_PROBE_NAME_LEN {
        return Err(ValidationError::new(
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
            return Err(ValidationError::new(
                format!("spec.nodeSelector[{key:?}]"),
                format!(
                    "{value:?} conflicts with {theirs:?} in the nodeSelector of FiberRegion {}; no node can match both",
                    region.name_any()
                ),
            ));
        }
    }
    probe::probe_config(p, region)
        .validate()
        .map_err(|e| e.within("spec"))
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

    #[test]
    fn a_selector_conflict_names_the_key_and_both_values() {
        let mut p = probe();
        p.spec
            .node_selector
            .insert("topology.kubernetes.io/region".into(), "ng".into());
        let e = validate_probe(&p, &region()).unwrap_err();
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
        let e = validate_probe(&p, &region()).unwrap_err();
        assert_eq!(e.field, "spec.targets[0].icmp.count");
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
