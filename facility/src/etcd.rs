//! The facility state in etcd (v3 JSON gateway) and the controllers'
//! election, so several controllers can run and one leads.
//!
//! Keys and values are base64 in the gateway's JSON; 64-bit numbers come back
//! as strings and zero or false fields are left out.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::model::FacilityState;
use crate::store::{Rev, Store, StoreError};

/// A small client over several endpoints: a call that cannot reach one
/// endpoint tries the next.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    agent: ureq::Agent,
}

fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

impl EtcdClient {
    /// Endpoints like `http://127.0.0.1:2379`; each call is bounded by `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        EtcdClient {
            endpoints: endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
        }
    }

    /// POST `body` to `path` on the first endpoint that answers. An HTTP
    /// error status from etcd is an answer (not retried elsewhere).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let mut last = String::from("no etcd endpoint configured");
        for ep in &self.endpoints {
            match self.agent.post(&format!("{ep}{path}")).send_json(body.clone()) {
                Ok(r) => {
                    return r
                        .into_json::<Value>()
                        .map_err(|e| StoreError::Unavailable(format!("{ep}{path}: bad JSON: {e}")))
                }
                Err(ureq::Error::Status(code, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    return Err(StoreError::Unavailable(format!("{ep}{path}: HTTP {code}: {text}")));
                }
                Err(e) => last = format!("{ep}{path}: {e}"),
            }
        }
        Err(StoreError::Unavailable(last))
    }

    /// The value and (create, mod) revisions of `key`, if present.
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u64, u64)>, StoreError> {
        let r = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        let Some(kv) = r.get("kvs").and_then(|k| k.get(0)) else {
            return Ok(None);
        };
        let val = kv
            .get("value")
            .and_then(Value::as_str)
            .map(|v| B64.decode(v))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("etcd value of {key}: {e}")))?
            .unwrap_or_default();
        Ok(Some((
            val,
            num(kv.get("create_revision").unwrap_or(&Value::Null)),
            num(kv.get("mod_revision").unwrap_or(&Value::Null)),
        )))
    }

    /// Run a transaction; returns (succeeded, header revision).
    pub fn txn(&self, compare: Value, success: Value) -> Result<(bool, u64), StoreError> {
        let r = self.call("/v3/kv/txn", &json!({ "compare": compare, "success": success }))?;
        let ok = r.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let rev = num(r.get("header").and_then(|h| h.get("revision")).unwrap_or(&Value::Null));
        Ok((ok, rev))
    }
}

/// The facility state under one key; the revision is the key's etcd
/// `mod_revision`, and a save is a transaction comparing it.
pub struct EtcdStore {
    client: EtcdClient,
    key: String,
}

impl EtcdStore {
    /// State stored at `key` (e.g. `/bmonitor/facility/state`).
    pub fn new(client: EtcdClient, key: impl Into<String>) -> Self {
        EtcdStore { client, key: key.into() }
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<(FacilityState, Rev), StoreError> {
        match self.client.get(&self.key)? {
            None => Ok((FacilityState::default(), Rev(0))),
            Some((v, _, m)) => {
                let st = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("etcd key {}: {e}", self.key)))?;
                Ok((st, Rev(m)))
            }
        }
    }

    fn save(&self, st: &FacilityState, expect: Rev) -> Result<Rev, StoreError> {
        let body = serde_json::to_vec(st).map_err(|e| StoreError::Corrupt(format!("encoding: {e}")))?;
        let cmp = if expect.0 == 0 {
            json!([{ "key": b64(&self.key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" }])
        } else {
            json!([{ "key": b64(&self.key), "target": "MOD", "result": "EQUAL", "mod_revision": expect.0.to_string() }])
        };
        let put = json!([{ "request_put": { "key": b64(&self.key), "value": B64.encode(&body) } }]);
        let (ok, rev) = self.client.txn(cmp, put)?;
        if ok {
            return Ok(Rev(rev));
        }
        let found = self.client.get(&self.key)?.map(|(_, _, m)| m).unwrap_or(0);
        Err(StoreError::Conflict { expected: expect, found: Rev(found) })
    }
}

/// Leader election: the leader owns `key`, attached to a lease it keeps
/// alive; losing the lease (a failed keepalive) means stepping down at once.
pub struct Election {
    client: EtcdClient,
    key: String,
    id: String,
    ttl_secs: u64,
    lease: Option<String>,
    leader: bool,
}

impl Election {
    /// Campaign for `key` as `id` with a lease of `ttl_secs` (a few seconds).
    pub fn new(client: EtcdClient, key: impl Into<String>, id: impl Into<String>, ttl_secs: u64) -> Self {
        Election { client, key: key.into(), id: id.into(), ttl_secs, lease: None, leader: false }
    }

    /// Whether this controller leads (as of the last campaign/keepalive).
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Try to become leader: grant a lease if needed, then create the key
    /// only if absent (`create_revision == 0`). Returns whether we lead.
    pub fn campaign(&mut self) -> Result<bool, StoreError> {
        // A lease from an earlier campaign may have run out meanwhile.
        if let Some(l) = self.lease.clone() {
            if !self.lease_alive(&l) {
                self.lease = None;
            }
        }
        let lease = match &self.lease {
            Some(l) => l.clone(),
            None => {
                let r = self.client.call("/v3/lease/grant", &json!({ "TTL": self.ttl_secs.to_string() }))?;
                let id = r
                    .get("ID")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| StoreError::Unavailable(format!("lease grant: no ID in {r}")))?;
                self.lease = Some(id.clone());
                id
            }
        };
        let cmp = json!([{ "key": b64(&self.key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" }]);
        let put = json!([{ "request_put": { "key": b64(&self.key), "value": b64(&self.id), "lease": lease } }]);
        let (ok, _) = self.client.txn(cmp, put)?;
        self.leader = ok || self.client.get(&self.key)?.is_some_and(|(v, _, _)| v == self.id.as_bytes());
        Ok(self.leader)
    }

    /// Renew the lease (call well within the TTL). A failure or an expired
    /// lease steps down; returns whether we still lead.
    pub fn keepalive(&mut self) -> bool {
        let Some(lease) = self.lease.clone() else {
            self.leader = false;
            return false;
        };
        let alive = self.lease_alive(&lease);
        if !alive {
            self.leader = false;
            self.lease = None;
        }
        self.leader && alive
    }

    /// Renew `lease` once; false when it is gone or etcd cannot be reached.
    fn lease_alive(&self, lease: &str) -> bool {
        self.client
            .call("/v3/lease/keepalive", &json!({ "ID": lease }))
            .map(|r| num(r.get("result").and_then(|x| x.get("TTL")).unwrap_or(&Value::Null)) > 0)
            .unwrap_or(false)
    }

    /// Give up leadership now (revoke the lease, so another takes over at once).
    pub fn resign(&mut self) -> Result<(), StoreError> {
        self.leader = false;
        if let Some(l) = self.lease.take() {
            self.client.call("/v3/lease/revoke", &json!({ "ID": l }))?;
        }
        Ok(())
    }

    /// The leader's id, if anyone leads.
    pub fn leader_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self.client.get(&self.key)?.map(|(v, _, _)| String::from_utf8_lossy(&v).into_owned()))
    }
}
