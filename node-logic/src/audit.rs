//! The audit log: hash-chained entries of what consoles asked and what the
//! node did, bounded (trimmed from the oldest, anchored), and read in pages.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use mgmt_proto::msg::{AuditEntry, Response, Role};
use mgmt_proto::AUDIT_PAGE;

use crate::NodeState;

impl NodeState {
    /// Appends an audit entry (the hypervisor logs what it handles itself).
    pub fn log(&mut self, role: Option<Role>, action: &str, outcome: String) {
        if !self.external_clock {
            self.clock += 1;
        }
        let index = self.audit_base + self.audit.len() as u64;
        let prev = self.audit.last().map_or(self.audit_anchor, |e| e.chain);
        let chain = AuditEntry::link(&prev, index, self.clock, role, action, &outcome);
        self.audit.push(AuditEntry { index, time_secs: self.clock, role, action: action.to_string(), outcome, chain });
        let max = self.limits.max_audit.max(1);
        if self.audit.len() > max {
            // Trim an eighth at a time so trimming is rare; the last trimmed
            // entry's chain value anchors what is kept.
            let cut = (self.audit.len() - max).max(max / 8).min(self.audit.len());
            if let Some(last_cut) = self.audit.get(cut.saturating_sub(1)) {
                self.audit_anchor = last_cut.chain;
            }
            self.audit.drain(..cut);
            self.audit_base = self.audit.first().map_or(index + 1, |e| e.index);
        }
    }

    /// [`mgmt_proto::Request::ReadAudit`]: a page of entries from `from`
    /// (all for the landlord, a tenant's own otherwise) with the chain value
    /// before it, so the console checks the page.
    pub(crate) fn read_audit(&self, role: Role, from: &u64) -> Response {
        // Entries before `audit_base` were trimmed: start at the oldest kept.
        let from = &(*from).max(self.audit_base);
        let start = usize::try_from(*from - self.audit_base).unwrap_or(usize::MAX);
        let entries: Vec<AuditEntry> = self
            .audit
            .iter()
            .skip(start)
            .filter(|e| role == Role::Landlord || e.role == Some(role))
            .take(AUDIT_PAGE)
            .cloned()
            .collect();
        let prev_chain = match start.checked_sub(1).and_then(|i| self.audit.get(i)) {
            Some(e) => e.chain,
            None => self.audit_anchor,
        };
        let next = if entries.len() < AUDIT_PAGE {
            (self.audit_base + self.audit.len() as u64).max(*from)
        } else {
            entries.last().map_or(*from, |e| e.index + 1)
        };
        Response::Audit { entries, next, prev_chain }
    }
}
