//! Fleet scenarios against fake nodes: node death and healing, a controller
//! dying mid-heal, partition and rejoin, drain, replication retry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, spec, ticks, Fleet, MemStore};
use facility::{Controller, ControllerConfig, FileStore, HealthConfig, NodeState, Store, VmState};

fn print_events<D: facility::NodeDriver, S: Store>(c: &Controller<D, S>) {
    for e in c.events() {
        println!("{e}");
    }
}

fn has_event<D: facility::NodeDriver, S: Store>(c: &Controller<D, S>, needle: &str) -> bool {
    c.events().iter().any(|e| e.text.contains(needle))
}

#[test]
fn dead_node_vms_healed_once_others_untouched_filters_blasted() {
    let names = ["n1", "n2", "n3", "n4"];
    let fleet = Fleet::new(&names, 8, 1024);
    let store = MemStore::default();
    let mut c = setup(&fleet, &store, &names);
    for i in 0..8u8 {
        c.create_vm(spec(&format!("vm{i}"), 1 + u32::from(i % 2), 200, 10 + i, false)).unwrap();
    }
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 1).unwrap();
    let victim = c.state().vms["vm0"].node.clone();
    let before: Vec<(String, String)> = c.state().vms.iter().map(|(k, v)| (k.clone(), v.node.clone())).collect();
    let on_victim: Vec<String> = before.iter().filter(|(_, n)| *n == victim).map(|(k, _)| k.clone()).collect();
    assert!(!on_victim.is_empty());
    let starts_before: Vec<(String, usize)> = names.iter().map(|n| (n.to_string(), fleet.count(n, "start"))).collect();

    fleet.kill(&victim);
    // 4 silent ticks: not yet (lease 3 s + margin 1 s, 5 misses needed).
    ticks(&mut c, &mut t, 4).unwrap();
    assert_eq!(c.state().nodes[&victim].state, NodeState::Active);
    ticks(&mut c, &mut t, 1).unwrap();
    assert_eq!(c.state().nodes[&victim].state, NodeState::Dead);
    print_events(&c);

    for (vm, node) in &before {
        let copies = fleet.running_copies(vm);
        assert_eq!(copies.len(), 1, "{vm} runs on {copies:?}");
        if *node == victim {
            assert_ne!(copies[0], victim);
            assert_eq!(c.state().vms[vm].node, copies[0]);
            assert_eq!(c.state().vms[vm].epoch, 2, "lock taken over");
            assert!(has_event(&c, &format!("healed {vm} on {}", copies[0])));
        } else {
            assert_eq!(&copies[0], node, "{vm} was moved");
            assert_eq!(c.state().vms[vm].epoch, 1);
        }
    }
    // Each healed VM was created once on its new node: starts went up by
    // exactly the number of VMs healed there, and nowhere else.
    for (n, s) in starts_before {
        let healed_here = on_victim.iter().filter(|v| c.state().vms[*v].node == n).count();
        assert_eq!(fleet.count(&n, "start"), s + healed_here, "{n}");
    }
    // Filters: every node hosting cluster 1 or 2 has its members.
    let g = fleet.nodes.lock().unwrap();
    for v in c.state().vms.values() {
        let f = &g[&v.node].filters[&v.spec.cluster];
        assert!(f.contains(&v.spec.ip.unwrap()), "{} not in filter on {}", v.spec.name, v.node);
    }
    drop(g);
    assert!(has_event(&c, "declared dead"));
    assert!(has_event(&c, "reprogrammed on"));
    assert!(c.state().intents.is_empty());
}

#[test]
fn not_enough_capacity_waits_with_the_limit_named() {
    let names = ["a", "b"];
    let fleet = Fleet::new(&names, 8, 512);
    let store = MemStore::default();
    let mut c = setup(&fleet, &store, &names);
    c.create_vm(spec("big1", 1, 400, 1, false)).unwrap();
    c.create_vm(spec("big2", 1, 400, 2, false)).unwrap();
    let err = c.create_vm(spec("big3", 1, 400, 3, false)).unwrap_err();
    assert_eq!(err.to_string(), "placement: no node has 400 MiB of memory free");
    let victim = c.state().vms["big1"].node.clone();
    fleet.kill(&victim);
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 7).unwrap();
    assert_eq!(c.state().vms["big1"].state, VmState::Waiting("no node has 400 MiB of memory free".into()));
    assert_eq!(fleet.running_copies("big2").len(), 1);
    print_events(&c);
}

#[test]
fn protected_vm_heals_on_its_partner_with_its_data() {
    let names = ["a", "b", "c"];
    let fleet = Fleet::new(&names, 8, 1024);
    let store = MemStore::default();
    let mut c = setup(&fleet, &store, &names);
    c.create_vm(spec("db", 7, 256, 5, true)).unwrap();
    let (primary, partner) = {
        let v = &c.state().vms["db"];
        (v.node.clone(), v.partner.clone().unwrap())
    };
    assert_ne!(primary, partner);
    for b in 0..600u64 {
        assert!(fleet.write(&primary, "db", b, &b.to_le_bytes()));
    }
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 3).unwrap();
    let lag = c.lag();
    assert_eq!(lag["db"].blocks_pending, 0, "{lag:?}");
    let written = fleet.disk(&primary, "db").unwrap();
    fleet.kill(&primary);
    ticks(&mut c, &mut t, 6).unwrap();
    print_events(&c);
    assert_eq!(fleet.running_copies("db"), vec![partner.clone()]);
    assert_eq!(fleet.disk(&partner, "db").unwrap(), written);
    let v = &c.state().vms["db"];
    assert_eq!(v.epoch, 2);
    let new_partner = v.partner.clone().unwrap();
    assert!(new_partner != partner && new_partner != primary);
    ticks(&mut c, &mut t, 2).unwrap();
    let g = fleet.nodes.lock().unwrap();
    assert_eq!(g[&new_partner].replicas["db"].1, written, "new replica filled");
    assert!(g[&partner].notes.iter().any(|n| n.contains("restarted")));
}

#[test]
fn controller_killed_mid_heal_another_finishes_nothing_lost_or_duplicated() {
    for limit in 0..12u64 {
        let names = ["a", "b", "c", "d"];
        let fleet = Fleet::new(&names, 8, 2048);
        let store = MemStore::default();
        let mut c1 = setup(&fleet, &store, &names);
        for i in 0..6u8 {
            c1.create_vm(spec(&format!("v{i}"), 1, 128, 20 + i, i % 2 == 0)).unwrap();
        }
        let victim = c1.state().vms["v0"].node.clone();
        let on_victim: Vec<String> =
            c1.state().vms.values().filter(|v| v.node == victim).map(|v| v.spec.name.clone()).collect();
        fleet.write(&victim, "v0", 3, b"precious");
        let mut t = Instant::now();
        ticks(&mut c1, &mut t, 2).unwrap();
        fleet.kill(&victim);
        c1.set_step_limit(Some(limit));
        let r = ticks(&mut c1, &mut t, 6);
        assert_eq!(c1.state().nodes[&victim].state, NodeState::Dead);
        let halted = r.is_err();
        drop(c1); // the leader dies here

        let mut c2 = Controller::new(&fleet, &store, ControllerConfig::default()).unwrap();
        ticks(&mut c2, &mut t, 2).unwrap();
        assert!(c2.state().intents.is_empty(), "limit {limit}: {:?}", c2.state().intents);
        for (name, v) in &c2.state().vms {
            let live: Vec<String> = fleet.copies(name).into_iter().filter(|n| *n != victim).collect();
            assert_eq!(live, vec![v.node.clone()], "limit {limit}: {name} defined on several nodes");
            assert_eq!(fleet.running_copies(name), vec![v.node.clone()], "limit {limit}: {name}");
            assert_ne!(v.node, victim);
        }
        let v0 = &c2.state().vms["v0"];
        assert_eq!(fleet.disk(&v0.node, "v0").unwrap()[&3], b"precious".to_vec());
        if limit == 3 {
            println!("--- controller 2 (first halted: {halted}), {} VMs were on {victim}", on_victim.len());
            print_events(&c2);
        }
    }
}

#[test]
fn partition_then_rejoin_fences_the_old_copies() {
    let names = ["x", "y", "z"];
    let fleet = Fleet::new(&names, 8, 1024);
    let store = MemStore::default();
    let mut c = Controller::new(&fleet, &store, ControllerConfig::default()).unwrap();
    // x is the largest, so both VMs land there.
    for (i, n) in names.iter().enumerate() {
        let mem = if *n == "x" { 4096 } else { 1024 };
        let cap = facility::Capacity { vcpus: 8, memory_mib: mem, disk_mib: 100_000 };
        c.add_node(Fleet::addr(n, i as u16), Some(cap)).unwrap();
    }
    c.create_vm(spec("u1", 1, 128, 1, false)).unwrap();
    c.create_vm(spec("p1", 1, 128, 2, true)).unwrap();
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 1).unwrap();
    let x = c.state().vms["u1"].node.clone();
    assert_eq!(c.state().vms["p1"].node, x);
    fleet.partition(&x);
    ticks(&mut c, &mut t, 6).unwrap();
    assert_eq!(c.state().nodes[&x].state, NodeState::Dead);
    // During the partition the unprotected VM runs twice (its old copy cannot
    // be reached); the protected one stopped itself when its lease ran out.
    assert_eq!(fleet.running_copies("u1").len(), 2);
    assert_eq!(fleet.running_copies("p1").len(), 1);
    fleet.heal_partition(&x);
    ticks(&mut c, &mut t, 1).unwrap();
    print_events(&c);
    assert_eq!(c.state().nodes[&x].state, NodeState::Active);
    for vm in ["u1", "p1"] {
        let copies = fleet.running_copies(vm);
        assert_eq!(copies.len(), 1, "{vm}: {copies:?}");
        assert_ne!(copies[0], x);
        assert!(!fleet.write(&x, vm, 0, b"stale"), "old copy of {vm} still writes");
    }
    assert_eq!(fleet.count(&x, "fence"), 2);
    assert!(fleet.nodes.lock().unwrap()[&x].vms.is_empty(), "rejoined node has VMs of its own");
    assert!(has_event(&c, "rejoined"));
    // The rejoined node takes work again.
    c.create_vm(spec("after", 1, 900, 9, false)).unwrap();
}

#[test]
fn drain_moves_vms_with_their_disks_then_remove() {
    let names = ["a", "b", "c"];
    let fleet = Fleet::new(&names, 8, 1024);
    let store = MemStore::default();
    let mut c = setup(&fleet, &store, &names);
    for (i, p) in [(0u8, false), (1, true), (2, false), (3, true)] {
        c.create_vm(spec(&format!("m{i}"), 3, 100, 40 + i, p)).unwrap();
    }
    let src = c.state().vms["m0"].node.clone();
    let mut contents = Vec::new();
    for (name, v) in c.state().vms.clone() {
        if v.node == src {
            for b in 0..300u64 {
                fleet.write(&src, &name, b, format!("{name}:{b}").as_bytes());
            }
            contents.push((name, fleet.disk(&src, &v.spec.name).unwrap()));
        }
    }
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 1).unwrap();
    let err = c.remove_node(&src).unwrap_err();
    assert!(err.to_string().contains("drain it first"), "{err}");
    let moves = c.drain_node(&src).unwrap();
    assert_eq!(moves, contents.len());
    ticks(&mut c, &mut t, 2).unwrap();
    print_events(&c);
    for (name, disk) in &contents {
        let v = &c.state().vms[name];
        assert_ne!(v.node, src);
        assert_eq!(fleet.copies(name), vec![v.node.clone()]);
        assert_eq!(fleet.running_copies(name), vec![v.node.clone()]);
        assert_eq!(&fleet.disk(&v.node, name).unwrap(), disk, "{name} lost data");
        assert!(v.partner.as_deref() != Some(src.as_str()));
    }
    assert!(has_event(&c, &format!("node {src} drained")));
    assert!(fleet.nodes.lock().unwrap()[&src].replicas.is_empty());
    c.remove_node(&src).unwrap();
    assert_eq!(c.state().nodes[&src].state, NodeState::Removed);
    // A drained node takes nothing new.
    for i in 0..4u8 {
        let n = c.create_vm(spec(&format!("late{i}"), 3, 50, 60 + i, false)).unwrap();
        assert_ne!(n, src);
    }
}

#[test]
fn failed_push_is_resent_and_lag_reported() {
    let names = ["a", "b"];
    let fleet = Fleet::new(&names, 8, 1024);
    let store = MemStore::default();
    let mut c = setup(&fleet, &store, &names);
    c.create_vm(spec("r", 1, 100, 1, true)).unwrap();
    let (p, q) = {
        let v = &c.state().vms["r"];
        (v.node.clone(), v.partner.clone().unwrap())
    };
    let mut t = Instant::now();
    ticks(&mut c, &mut t, 2).unwrap();
    assert_eq!(c.lag()["r"].dirty_since, None);
    fleet.write(&p, "r", 9, b"nine");
    *fleet.fail_pushes.lock().unwrap() = 1;
    ticks(&mut c, &mut t, 1).unwrap();
    assert!(has_event(&c, "batch kept for retry"));
    let lag = c.lag();
    assert_eq!(lag["r"].blocks_pending, 1);
    assert_eq!(lag["r"].age(t + Duration::from_secs(2)), Duration::from_secs(2));
    ticks(&mut c, &mut t, 1).unwrap();
    assert_eq!(c.lag()["r"].blocks_pending, 0);
    assert_eq!(c.lag()["r"].dirty_since, None);
    assert_eq!(fleet.nodes.lock().unwrap()[&q].replicas["r"].1[&9], b"nine".to_vec());
}

#[test]
fn unsafe_timing_refused_at_construction() {
    let fleet = Fleet::new(&["a"], 1, 1);
    let store = MemStore::default();
    let cfg = ControllerConfig {
        health: HealthConfig { misses: 2, ..HealthConfig::default() },
        ..ControllerConfig::default()
    };
    let err = Controller::new(&fleet, &store, cfg).err().unwrap();
    assert!(err.to_string().contains("fencing lease"), "{err}");
}

#[test]
fn operations_refuse_clearly() {
    let names = ["a", "b"];
    let fleet = Fleet::new(&names, 8, 1024);
    let store = MemStore::default();
    let mut c = setup(&fleet, &store, &names);
    assert!(c.add_node(Fleet::addr("a", 0), None).unwrap_err().to_string().contains("already"));
    fleet.kill("b");
    let err = c.add_node(Fleet::addr("zz", 9), None).unwrap_err();
    assert!(err.to_string().contains("node zz: enrolment heartbeat: unreachable"), "{err}");
    c.create_vm(spec("one", 1, 10, 1, false)).unwrap();
    assert!(c.create_vm(spec("one", 1, 10, 2, false)).unwrap_err().to_string().contains("already exists"));
    assert!(c.create_vm(spec("two", 1, 10, 1, false)).unwrap_err().to_string().contains("already one's"));
    assert!(c.drain_node("nope").unwrap_err().to_string().contains("unknown node"));
}

#[test]
fn file_store_state_survives_a_controller_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("facility.state");
    let fleet = Fleet::new(&["a", "b"], 8, 1024);
    {
        let mut c = Controller::new(&fleet, FileStore::new(&path), ControllerConfig::default()).unwrap();
        c.add_node(Fleet::addr("a", 0), None).unwrap();
        c.add_node(Fleet::addr("b", 1), None).unwrap();
        c.create_vm(spec("keep", 1, 64, 1, true)).unwrap();
    }
    let c = Controller::new(&fleet, FileStore::new(&path), ControllerConfig::default()).unwrap();
    assert_eq!(c.state().nodes.len(), 2);
    assert_eq!(c.state().vms["keep"].state, VmState::Running);
    assert!(c.state().vms["keep"].partner.is_some());
}
