//! Fuzzes what an operator hands the facility controller: runbook documents
//! (`facility::runbook::RunbookDoc::parse`), run parameters, and recorded
//! run requests checked by the gates (`facility::run::check_gates`).
//!
//! Input layout: one mode byte, then the rest as text. Mode 0: a runbook
//! document; one that parses also validates, prints back and parses to the
//! same value. Mode 1: run parameters as a JSON object of strings, checked
//! for every action. Mode 2: a stored `Run` record (JSON), checked by the
//! gates against a facility with one protected VM `db` and a runbook for it:
//! never a panic, and a refusal names a gate from 1 to 4.
#![no_main]

use std::collections::BTreeMap;

use facility::run::{check_gates, Run};
use facility::runbook::{validate, validate_params, Action, RunbookDoc};
use libfuzzer_sys::fuzz_target;

const DOC: &str = r#"{"service":"db","allow":{"operators":{"alice":"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"},"hosts":["n1","n2"]},
"actions":{"migrate":[{"step":"stop","on_failure":"die"},{"step":"snapshot","on_failure":"die"},{"step":"switch_lock","on_failure":"die"},{"step":"start","on_failure":"retry 2 then die"},{"step":"verify","on_failure":"warn","services":["web"],"timeout_s":5}],
"takeover":[{"step":"switch_lock","on_failure":"die"},{"step":"start","on_failure":"die"}]}}"#;

fn facility_with_db() -> facility::FacilityState {
    let mut st = facility::FacilityState::default();
    let doc = RunbookDoc::parse(DOC).expect("the fixture runbook is valid");
    st.runbooks.insert("db".into(), doc);
    st
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match mode % 3 {
        0 => {
            if let Ok(doc) = RunbookDoc::parse(text) {
                validate(&doc).expect("a parsed document validates");
                let again = serde_json::to_string(&doc).expect("prints");
                assert_eq!(RunbookDoc::parse(&again).expect("prints back valid"), doc);
            }
        }
        1 => {
            if let Ok(p) = serde_json::from_str::<BTreeMap<String, String>>(text) {
                for a in [Action::Migrate, Action::Takeover, Action::Failback] {
                    let _ = validate_params(a, &p);
                }
            }
        }
        _ => {
            if let Ok(run) = serde_json::from_str::<Run>(text) {
                let st = facility_with_db();
                if let Err(r) = check_gates(&st, &run, 1_700_000_000_000) {
                    assert!((1..=4).contains(&r.gate), "{r:?}");
                    assert!(!r.why.is_empty());
                }
            }
        }
    }
});
