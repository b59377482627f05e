//! EtcdStore and Election against a real etcd named by `BM_ETCD_ENDPOINTS`
//! (comma-separated URLs); skipped with a printed reason otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{spec, Fleet};
use facility::etcd::{Election, EtcdClient, EtcdStore};
use facility::{Controller, ControllerConfig, Rev, Store, StoreError};

fn endpoints() -> Option<Vec<String>> {
    match std::env::var("BM_ETCD_ENDPOINTS") {
        Ok(v) if !v.trim().is_empty() => Some(v.split(',').map(|s| s.trim().to_string()).collect()),
        _ => {
            println!("skipped: BM_ETCD_ENDPOINTS names no etcd endpoints");
            None
        }
    }
}

fn unique(tag: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("/bmonitor-test/{tag}/{n}")
}

#[test]
fn etcd_store_compare_and_swap() {
    let Some(eps) = endpoints() else { return };
    // A dead endpoint first: the client moves on to the next.
    let mut all = vec!["http://127.0.0.1:1".to_string()];
    all.extend(eps);
    let c = EtcdClient::new(&all, Duration::from_secs(2));
    let s = EtcdStore::new(c, unique("state"));
    let (mut st, r0) = s.load().unwrap();
    assert_eq!(r0, Rev(0));
    st.next_instance = 42;
    let r1 = s.save(&st, r0).unwrap();
    assert!(r1.0 > 0);
    assert!(matches!(s.save(&st, r0), Err(StoreError::Conflict { found, .. }) if found == r1));
    let (back, rb) = s.load().unwrap();
    assert_eq!((back.next_instance, rb), (42, r1));
    st.next_instance = 43;
    let r2 = s.save(&st, r1).unwrap();
    assert!(r2 > r1);
    assert!(matches!(s.save(&st, r1), Err(StoreError::Conflict { .. })));
}

#[test]
fn election_one_leader_then_takeover_after_the_lease() {
    let Some(eps) = endpoints() else { return };
    let key = unique("leader");
    let c = EtcdClient::new(&eps, Duration::from_secs(2));
    let mut a = Election::new(c.clone(), &key, "ctl-a", 2);
    let mut b = Election::new(c.clone(), &key, "ctl-b", 2);
    assert!(a.campaign().unwrap());
    assert!(!b.campaign().unwrap());
    assert!(a.keepalive());
    assert_eq!(b.leader_id().unwrap().as_deref(), Some("ctl-a"));
    // a stops renewing (a dead controller): its lease runs out, b takes over.
    let start = Instant::now();
    let mut won = false;
    while start.elapsed() < Duration::from_secs(10) {
        if b.campaign().unwrap() {
            won = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(won, "b never became leader");
    println!("takeover after {:?} (lease TTL 2 s)", start.elapsed());
    assert!(!a.keepalive(), "a must step down when its lease is gone");
    assert!(!a.is_leader());
    assert!(b.keepalive());
    b.resign().unwrap();
    assert!(a.campaign().unwrap(), "resign frees the key at once");
    a.resign().unwrap();
}

#[test]
fn controllers_share_state_through_etcd() {
    let Some(eps) = endpoints() else { return };
    let key = unique("facility");
    let c = EtcdClient::new(&eps, Duration::from_secs(2));
    let fleet = Fleet::new(&["a", "b"], 8, 1024);
    {
        let mut c1 = Controller::new(&fleet, EtcdStore::new(c.clone(), &key), ControllerConfig::default()).unwrap();
        c1.add_node(Fleet::addr("a", 0), None).unwrap();
        c1.add_node(Fleet::addr("b", 1), None).unwrap();
        c1.create_vm(spec("e1", 1, 64, 1, true)).unwrap();
    }
    let mut c2 = Controller::new(&fleet, EtcdStore::new(c.clone(), &key), ControllerConfig::default()).unwrap();
    assert_eq!(c2.state().vms["e1"].epoch, 1);
    c2.tick(Instant::now()).unwrap();
    // A stale writer is refused.
    let s = EtcdStore::new(c, &key);
    assert!(matches!(s.save(c2.state(), Rev(1)), Err(StoreError::Conflict { .. })));
}

#[test]
fn leader_dies_mid_heal_and_the_next_leader_finishes() {
    let Some(eps) = endpoints() else { return };
    let key = unique("facility");
    let lkey = unique("leader");
    let c = EtcdClient::new(&eps, Duration::from_secs(2));
    let fleet = Fleet::new(&["a", "b", "c"], 8, 2048);
    let mut c1 = Controller::new(&fleet, EtcdStore::new(c.clone(), &key), ControllerConfig::default()).unwrap();
    let mut e1 = Election::new(c.clone(), &lkey, "ctl-1", 2);
    let mut t = Instant::now();
    assert!(c1.tick_as_leader(&mut e1, t).unwrap().is_some());
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        c1.add_node(Fleet::addr(n, i as u16), None).unwrap();
    }
    for i in 0..4u8 {
        c1.create_vm(spec(&format!("h{i}"), 1, 100, i + 1, i % 2 == 0)).unwrap();
    }
    let victim = c1.state().vms["h0"].node.clone();
    fleet.kill(&victim);
    c1.set_step_limit(Some(2));
    for _ in 0..6 {
        t += Duration::from_secs(1);
        let _ = c1.tick_as_leader(&mut e1, t);
    }
    assert!(!c1.state().intents.is_empty(), "leader should have stopped mid-heal");
    drop(c1); // dies without resigning: its lease runs out

    let mut c2 = Controller::new(&fleet, EtcdStore::new(c.clone(), &key), ControllerConfig::default()).unwrap();
    let mut e2 = Election::new(c, &lkey, "ctl-2", 2);
    let start = Instant::now();
    while c2.tick_as_leader(&mut e2, Instant::now()).unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "never became leader");
        std::thread::sleep(Duration::from_millis(200));
    }
    for e in c2.events() {
        println!("{e}");
    }
    assert!(c2.state().intents.is_empty());
    for (name, v) in &c2.state().vms {
        assert_eq!(fleet.running_copies(name), vec![v.node.clone()], "{name}");
    }
    e2.resign().unwrap();
}
