//! A probe's configuration file (the operator renders it; a user may write one for a probe
//! outside the cluster): any text either fails to load with an error or loads; a config that
//! validates is written out and read back to the same config, still valid.
#![no_main]

use fiberstack_model::ProbeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(config) = ProbeConfig::from_yaml(text) else {
        return;
    };
    let problems = config.problems();
    assert_eq!(
        config.validate().is_ok(),
        problems.is_empty(),
        "validate and problems disagree"
    );
    if !problems.is_empty() {
        return;
    }
    let again = ProbeConfig::from_yaml(&config.to_yaml()).expect("a written config loads");
    assert_eq!(again, config, "a config changed by writing it out");
    assert!(again.validate().is_ok());
});
