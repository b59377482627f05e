//! Runbooks and rolling upgrades against fake nodes: the four gates (and no
//! node command when one refuses), each failure policy, migrate, takeover,
//! failback, a controller failover in the middle of a run, and a rollout
//! over three update domains that healing pre-empts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{setup, spec, ticks, Ctl, Fleet, MemStore};
use ed25519_dalek::{Signer, SigningKey};
use facility::driver::BootImage;
use facility::rollout::RolloutState;
use facility::run::{RunRequest, RunState, StepStatus};
use facility::runbook::{encode_hex, Action};
use facility::{Controller, ControllerConfig, NodeState, VmState};
use serde_json::json;

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn step(kind: &str, policy: &str) -> serde_json::Value {
    json!({"step": kind, "on_failure": policy})
}

fn verify(policy: &str, services: &[&str], timeout: u32) -> serde_json::Value {
    json!({"step": "verify", "on_failure": policy, "services": services, "timeout_s": timeout})
}

fn migrate_steps(extra_verify: Option<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut s = vec![
        step("replicate", "retry 2 then die"),
        step("stop", "die"),
        step("snapshot", "die"),
        step("switch_lock", "die"),
        step("start", "retry 2 then die"),
        verify("warn", &["web"], 5),
    ];
    if let Some(v) = extra_verify {
        s.push(v);
    }
    s.extend([
        step("replicate", "warn"),
        step("filters", "retry 3 then die"),
        json!({"step": "notify", "on_failure": "warn", "text": "db moved"}),
    ]);
    s
}

fn doc(hosts: &[&str], migrate: Vec<serde_json::Value>) -> String {
    json!({
        "service": "db",
        "allow": {"operators": {"alice": encode_hex(key(1).verifying_key().as_bytes())}, "hosts": hosts},
        "actions": {
            "migrate": migrate,
            "takeover": [step("stop", "warn"), step("switch_lock", "die"), step("start", "retry 2 then die"),
                         verify("warn", &["web"], 5), step("replicate", "warn"), step("filters", "die"), step("notify", "warn")],
            "failback": migrate_steps(None),
        }
    })
    .to_string()
}

fn signed(
    c: &mut Ctl<'_>,
    action: Action,
    params: &[(&str, &str)],
    operator: &str,
    signer: &SigningKey,
    nonce: u64,
) -> u64 {
    let req = RunRequest {
        service: "db".into(),
        action,
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        operator: operator.into(),
        nonce,
        issued_ms: unix_ms(),
    };
    let sig = encode_hex(&signer.sign(&req.signing_bytes()).to_bytes());
    c.request_run(req, sig).unwrap()
}

/// Ticks until run `id` ends (at most 60 rounds).
fn finish(c: &mut Ctl<'_>, t: &mut Instant, id: u64) -> RunState {
    for _ in 0..200 {
        ticks(c, t, 1).unwrap();
        // verify waits on the wall clock (its bound survives a failover).
        std::thread::sleep(Duration::from_millis(50));
        let r = c.run(id).unwrap();
        if r.state.finished() {
            return r.state.clone();
        }
    }
    panic!("run {id} did not finish: {:?}", c.run(id));
}

/// A facility with protected db on n1 (partner n2), data written and replicated.
fn with_db<'a>(fleet: &'a Fleet, store: &'a MemStore, t: &mut Instant) -> Ctl<'a> {
    *fleet.services.lock().unwrap() = vec!["web".into()];
    let mut c = setup(fleet, store, &NAMES);
    let mut s = spec("db", 1, 256, 5, true);
    s.cmdline = "console=ttyS0".into();
    c.create_vm_on(s, Some("n1")).unwrap();
    for b in 0..300u64 {
        assert!(fleet.write("n1", "db", b, &b.to_le_bytes()));
    }
    ticks(&mut c, t, 3).unwrap();
    assert_eq!(c.state().vms["db"].partner.as_deref(), Some("n2"));
    c
}

#[test]
fn each_gate_refuses_with_its_name_and_no_node_hears_of_it() {
    let (fleet, store) = (Fleet::new(&NAMES, 8, 2048), MemStore::default());
    let mut t = Instant::now();
    let mut c = with_db(&fleet, &store, &mut t);
    c.set_runbook(&doc(&["n1", "n2"], migrate_steps(None)), "landlord").unwrap();
    let calls = fleet.calls.lock().unwrap().len();
    let cases: Vec<(u64, u8, &str)> = vec![
        (signed(&mut c, Action::Migrate, &[], "mallory", &key(9), 1), 1, "mallory is not on db's allow-list"),
        (signed(&mut c, Action::Migrate, &[("to", "n3")], "alice", &key(1), 2), 1, "host n3 is not on"),
        (signed(&mut c, Action::Failback, &[], "alice", &key(1), 3), 2, "nowhere to fail back"),
        (signed(&mut c, Action::Takeover, &[], "alice", &key(1), 4), 2, "declared dead"),
        (signed(&mut c, Action::Migrate, &[("speed", "fast")], "alice", &key(1), 5), 3, "takes only to"),
        (signed(&mut c, Action::Migrate, &[], "alice", &key(2), 6), 4, "does not verify"),
    ];
    ticks(&mut c, &mut t, 1).unwrap();
    for (id, gate, why) in cases {
        match &c.run(id).unwrap().state {
            RunState::Refused(r) => {
                assert_eq!(r.gate, gate, "run {id}: {r:?}");
                assert!(r.why.contains(why), "run {id}: {r:?}");
            }
            s => panic!("run {id} not refused: {s:?}"),
        }
    }
    // Replication rounds talk to nodes; no refused run sent a command.
    let after: Vec<(String, String)> = fleet.calls.lock().unwrap()[calls..].to_vec();
    assert!(after.iter().all(|(_, call)| call == "push" || call == "pull"), "{after:?}");
    assert_eq!(c.state().vms["db"].node, "n1");
    assert_eq!(c.state().vms["db"].state, VmState::Running);
    // A replayed signed request is refused at gate 4 even once valid.
    let req = c.run(2).unwrap().request.clone();
    let sig = c.run(2).unwrap().signature.clone();
    c.set_runbook(&doc(&["n1", "n2", "n3"], migrate_steps(None)), "landlord").unwrap();
    let replay = c.request_run(req, sig).unwrap();
    ticks(&mut c, &mut t, 1).unwrap();
    assert!(matches!(&c.run(replay).unwrap().state, RunState::Refused(r) if r.gate == 4 && r.why.contains("replayed")));
    assert!(c.state().audit.iter().filter(|a| a.outcome.starts_with("refused at gate")).count() >= 7);
}

#[test]
fn migrate_moves_the_data_and_keeps_the_address() {
    let (fleet, store) = (Fleet::new(&NAMES, 8, 2048), MemStore::default());
    let mut t = Instant::now();
    let mut c = with_db(&fleet, &store, &mut t);
    c.set_runbook(&doc(&["n1", "n2", "n3"], migrate_steps(None)), "landlord").unwrap();
    for b in 300..320u64 {
        fleet.write("n1", "db", b, b"late");
    }
    let written = fleet.disk("n1", "db").unwrap();
    let id = signed(&mut c, Action::Migrate, &[], "alice", &key(1), 10);
    assert_eq!(finish(&mut c, &mut t, id), RunState::Succeeded);
    let v = &c.state().vms["db"];
    assert_eq!((v.node.as_str(), v.partner.as_deref(), v.epoch), ("n2", Some("n1"), 2));
    assert_eq!(v.spec.ip, Some([10, 1, 0, 5]));
    assert_eq!(fleet.running_copies("db"), vec!["n2".to_string()]);
    assert_eq!(fleet.disk("n2", "db").unwrap(), written);
    ticks(&mut c, &mut t, 2).unwrap();
    assert_eq!(fleet.nodes.lock().unwrap()["n1"].replicas["db"].1, written, "the old primary is the new replica");
    let r = c.run(id).unwrap();
    assert!(r.steps.iter().all(|s| s.status == StepStatus::Done), "{:?}", r.steps);
    assert!(fleet.nodes.lock().unwrap()["n2"].notes.iter().any(|n| n.contains("db moved")));
}

#[test]
fn failure_policies_do_what_they_say() {
    let (fleet, store) = (Fleet::new(&NAMES, 8, 2048), MemStore::default());
    let mut t = Instant::now();
    let mut c = with_db(&fleet, &store, &mut t);
    // A verify after the start, on a service that never comes up.
    for (n, policy) in ["die", "retry 2 then die"].iter().enumerate() {
        let steps = migrate_steps(Some(verify(policy, &["nosuch"], 1)));
        c.set_runbook(&doc(&["n1", "n2", "n3"], steps), "landlord").unwrap();
        let id = signed(&mut c, Action::Migrate, &[], "alice", &key(1), 20 + n as u64);
        let st = finish(&mut c, &mut t, id);
        let r = c.run(id).unwrap();
        let v = r.steps.iter().find(|s| s.spec.as_ref().is_some_and(|x| x.services == ["nosuch"])).unwrap();
        assert!(matches!(st, RunState::Failed { .. }), "{policy}: {st:?}");
        assert_eq!(v.status, StepStatus::Failed);
        assert_eq!(v.attempts, if n == 0 { 1 } else { 3 }, "{policy}");
        assert!(r
            .steps
            .iter()
            .skip_while(|s| s.status != StepStatus::Failed)
            .skip(1)
            .all(|s| s.status == StepStatus::Skipped));
        // The service runs where the switch put it; the next run starts from there.
        assert_eq!(c.state().vms["db"].state, VmState::Running);
        // The deposed source copy is gone, so it can hold the replica again.
        let from = r.from.clone().unwrap();
        ticks(&mut c, &mut t, 2).unwrap();
        assert!(!fleet.nodes.lock().unwrap()[&from].vms.contains_key("db"), "{policy}: stale copy on {from}");
        assert!(c.state().intents.is_empty(), "{policy}: {:?}", c.state().intents);
    }
    for (n, policy) in ["warn", "retry 1 then warn"].iter().enumerate() {
        let steps = migrate_steps(Some(verify(policy, &["nosuch"], 1)));
        c.set_runbook(&doc(&["n1", "n2", "n3"], steps), "landlord").unwrap();
        let id = signed(&mut c, Action::Migrate, &[], "alice", &key(1), 30 + n as u64);
        assert_eq!(finish(&mut c, &mut t, id), RunState::Succeeded, "{policy}");
        let r = c.run(id).unwrap();
        assert_eq!(r.warnings, 1);
        let v = r.steps.iter().find(|s| s.status == StepStatus::Warned).unwrap();
        assert_eq!(v.attempts, 1 + n as u32, "{policy}");
        assert_eq!(r.steps.last().unwrap().status, StepStatus::Done, "the run went on after the warning");
    }
}

#[test]
fn takeover_then_failback_and_no_automatic_heal() {
    let (fleet, store) = (Fleet::new(&NAMES, 8, 2048), MemStore::default());
    let mut t = Instant::now();
    let mut c = with_db(&fleet, &store, &mut t);
    c.set_runbook(&doc(&["n1", "n2", "n3"], migrate_steps(None)), "landlord").unwrap();
    let written = fleet.disk("n1", "db").unwrap();
    fleet.kill("n1");
    ticks(&mut c, &mut t, 8).unwrap();
    assert_eq!(c.state().nodes["n1"].state, NodeState::Dead);
    assert!(matches!(&c.state().vms["db"].state, VmState::Waiting(w) if w.contains("takeover")));
    assert!(fleet.running_copies("db").is_empty(), "not healed by itself");
    let id = signed(&mut c, Action::Takeover, &[], "alice", &key(1), 40);
    assert_eq!(finish(&mut c, &mut t, id), RunState::Succeeded);
    let v = c.state().vms["db"].clone();
    assert_eq!((v.node.as_str(), v.partner.as_deref()), ("n2", Some("n3")));
    assert_eq!(fleet.disk("n2", "db").unwrap(), written);
    // n1 returns: its stale copy is fenced, then db fails back to it.
    fleet.heal_partition("n1");
    ticks(&mut c, &mut t, 3).unwrap();
    assert_eq!(c.state().nodes["n1"].state, NodeState::Active);
    fleet.write("n2", "db", 7, b"after takeover");
    let written = fleet.disk("n2", "db").unwrap();
    let id = signed(&mut c, Action::Failback, &[], "alice", &key(1), 41);
    assert_eq!(finish(&mut c, &mut t, id), RunState::Succeeded, "{:?}", c.run(id));
    assert_eq!(c.state().vms["db"].node, "n1");
    assert_eq!(fleet.running_copies("db"), vec!["n1".to_string()]);
    assert_eq!(fleet.disk("n1", "db").unwrap(), written);
    assert_eq!(fleet.copies("db"), vec!["n1".to_string()], "no stale copy left");
    assert!(!c.state().failback_to.contains_key("db"));
}

#[test]
fn a_run_interrupted_by_failover_resumes_without_repeating_a_notice() {
    for limit in 0..10u64 {
        let (fleet, store) = (Fleet::new(&NAMES, 8, 2048), MemStore::default());
        let mut t = Instant::now();
        let mut c1 = with_db(&fleet, &store, &mut t);
        c1.set_runbook(&doc(&["n1", "n2", "n3"], migrate_steps(None)), "landlord").unwrap();
        let written = fleet.disk("n1", "db").unwrap();
        let id = signed(&mut c1, Action::Migrate, &[], "alice", &key(1), 50);
        c1.set_step_limit(Some(limit));
        let _ = ticks(&mut c1, &mut t, 3);
        drop(c1);
        let mut c2 = Controller::new(&fleet, &store, ControllerConfig::default()).unwrap();
        let st = finish(&mut c2, &mut t, id);
        assert_eq!(st, RunState::Succeeded, "limit {limit}: {:?}", c2.run(id));
        assert_eq!(fleet.running_copies("db"), vec!["n2".to_string()], "limit {limit}");
        assert_eq!(fleet.disk("n2", "db").unwrap(), written, "limit {limit}");
        let notes = fleet.nodes.lock().unwrap()["n2"].notes.iter().filter(|n| n.contains("db moved")).count();
        assert!(notes <= 1, "limit {limit}: the tenant was told {notes} times");
        assert_eq!(c2.state().vms["db"].epoch, 2, "limit {limit}: one switch only");
    }
}

fn boot(initrd: &str) -> BootImage {
    BootImage { image: "vmlinuz".into(), initrd: Some(initrd.into()), cmdline: "console=ttyS0".into() }
}

#[test]
fn rollout_goes_domain_by_domain_and_healing_brings_back_the_right_version() {
    let (fleet, store) = (Fleet::new(&NAMES, 8, 4096), MemStore::default());
    *fleet.services.lock().unwrap() = vec!["web".into()];
    let mut c = setup(&fleet, &store, &NAMES);
    c.define_service("web", "v1", boot("web-v1.img"), vec!["web".into()]).unwrap();
    c.add_version("web", "v2", boot("web-v2.img")).unwrap();
    // web-0 (domain 0) and web-2 (domain 2) on n3, web-1 on n1.
    for (i, node) in [(0u32, "n3"), (1, "n1"), (2, "n3")] {
        let mut s = spec(&format!("web-{i}"), 1, 256, 20 + i as u8, true);
        let (v, img) = c.service_image("web", i).unwrap();
        s.service = Some("web".into());
        s.domain = Some(i);
        s.version = Some(v);
        s.image = img.image;
        s.initrd = img.initrd;
        c.create_vm_on(s, Some(node)).unwrap();
        fleet.write(node, &format!("web-{i}"), 1, format!("data {i}").as_bytes());
    }
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 3).unwrap();
    c.start_rollout("web", "v2", 60, "ops").unwrap();
    // Domain 0 upgrades and becomes healthy; domain 1 starts.
    for _ in 0..10 {
        ticks(&mut c, &mut t, 1).unwrap();
        if c.state().services["web"].rollout.as_ref().unwrap().position == 1 {
            break;
        }
    }
    assert_eq!(c.state().vms["web-0"].spec.version.as_deref(), Some("v2"));
    assert_eq!(c.state().vms["web-2"].spec.version.as_deref(), Some("v1"));
    // Domain 1 is slow to become healthy; n3 dies meanwhile, and the
    // healed VMs take a while to be healthy again too.
    fleet.sick_vms.lock().unwrap().extend(["web-1".to_string(), "web-0".into(), "web-2".into()]);
    fleet.kill("n3");
    let mut saw_pause = false;
    let mut refused = false;
    for _ in 0..12 {
        ticks(&mut c, &mut t, 1).unwrap();
        let r = c.state().services["web"].rollout.clone().unwrap();
        if matches!(r.state, RolloutState::Paused(_)) {
            saw_pause = true;
            if !refused {
                let e = c.upgrade_domain("web", 2, "v2", false, "ops").unwrap_err().to_string();
                assert!(e.contains("refused") && e.contains("heal"), "{e}");
                refused = true;
            }
        }
        let healed = ["web-0", "web-2"]
            .iter()
            .all(|v| c.state().vms[*v].node != "n3" && c.state().vms[*v].state == VmState::Running);
        if healed && refused {
            break;
        }
    }
    if !(saw_pause && refused) {
        for e in c.events() {
            println!("{e}");
        }
    }
    assert!(saw_pause && refused, "healing paused the rollout and refused a manual upgrade");
    let g = fleet.nodes.lock().unwrap();
    let booted = |vm: &str| {
        let n = &c.state().vms[vm].node;
        g[n].vms[vm].boot.clone().unwrap().initrd.unwrap()
    };
    assert_eq!(booted("web-0"), "web-v2.img", "an upgraded domain heals on the new version");
    assert_eq!(booted("web-2"), "web-v1.img", "a domain not reached heals on the old version");
    assert_eq!(g[&c.state().vms["web-2"].node].vms["web-2"].disk[&1], b"data 2".to_vec(), "data carried");
    drop(g);
    assert_eq!(c.state().services["web"].rollout.as_ref().unwrap().position, 1, "still on domain 1");
    fleet.sick_vms.lock().unwrap().clear();
    for _ in 0..30 {
        ticks(&mut c, &mut t, 1).unwrap();
        if c.state().services["web"].rollout.as_ref().unwrap().state == RolloutState::Done {
            break;
        }
    }
    let svc = &c.state().services["web"];
    assert_eq!(svc.rollout.as_ref().unwrap().state, RolloutState::Done, "{:?}", svc.rollout);
    assert_eq!(svc.version, "v2");
    let g = fleet.nodes.lock().unwrap();
    for vm in ["web-0", "web-1", "web-2"] {
        let n = &c.state().vms[vm].node;
        assert_eq!(g[n].vms[vm].boot.clone().unwrap().initrd.unwrap(), "web-v2.img", "{vm}");
        assert!(g[n].vms[vm].running, "{vm}");
    }
    drop(g);
    // A forced manual upgrade is audited.
    c.add_version("web", "v3", boot("web-v3.img")).unwrap();
    c.upgrade_domain("web", 1, "v3", true, "ops").unwrap();
    assert!(c.state().audit.iter().any(|a| a.what.contains("domain 1 to v3") && a.who == "ops"));
    assert!(c.state().audit.iter().any(|a| a.outcome.starts_with("refused")));
}

#[test]
fn published_schema_and_the_code_agree() {
    let schema: serde_json::Value = serde_json::from_str(facility::runbook::SCHEMA).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let good = doc(&["n1"], migrate_steps(None));
    let mut bad: Vec<String> = Vec::new();
    let base: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut d = base.clone();
        f(&mut d);
        d.to_string()
    };
    bad.push(mutate(&|d| d["extra"] = json!(1)));
    bad.push(mutate(&|d| d["allow"]["hosts"] = json!([])));
    bad.push(mutate(&|d| d["allow"]["operators"]["alice"] = json!("zz")));
    bad.push(mutate(&|d| d["actions"]["migrate"][0]["on_failure"] = json!("retry 0 then die")));
    bad.push(mutate(&|d| d["actions"]["migrate"][0]["step"] = json!("reboot")));
    bad.push(mutate(&|d| d["actions"]["migrate"][0]["timeout_s"] = json!(5)));
    bad.push(mutate(&|d| d["actions"]["migrate"][5]["timeout_s"] = json!(0)));
    bad.push(mutate(&|d| d["actions"]["rollback"] = json!([])));
    bad.push(mutate(&|d| d["service"] = json!("db prod")));
    let good_v: serde_json::Value = serde_json::from_str(&good).unwrap();
    assert!(v.is_valid(&good_v));
    assert!(facility::runbook::RunbookDoc::parse(&good).is_ok());
    for b in &bad {
        let bv: serde_json::Value = serde_json::from_str(b).unwrap();
        assert!(!v.is_valid(&bv), "schema accepts {b}");
        assert!(facility::runbook::RunbookDoc::parse(b).is_err(), "code accepts {b}");
    }
    // Order rules the schema states in words: the code enforces them.
    let reordered = mutate(&|d| d["actions"]["migrate"].as_array_mut().unwrap().swap(1, 2));
    assert!(facility::runbook::RunbookDoc::parse(&reordered).unwrap_err().contains("order"));
}
