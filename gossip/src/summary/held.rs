//! Members' summaries as they arrive: each chunk checked against the key its reporter's name
//! is bound to, assembled by version, held within [`MAX_HELD_ENTRIES`].

use std::time::Instant;

use super::codec::{self, Parsed};
use super::spread::{Assembly, Complete, PULL_AFTER};
use super::{PathReport, MAX_ENTRIES, MAX_HELD_ENTRIES};
use crate::gossip::Gossip;
use crate::inbox::Binding;

impl Gossip {
    /// A chunk of a member's summary arrived.
    pub(crate) fn apply_summary(&mut self, payload: &[u8], now: Instant) {
        let Ok(p) = codec::decode(payload) else {
            self.counters.summary_chunks_refused += 1;
            return;
        };
        self.counters.unknown_fields += u64::from(p.skipped);
        let name = p.reporter();
        let live = name != self.me.name && self.members.get(name).is_some_and(|e| e.is_live());
        let (key, latest) = {
            let inbox = self.inbox();
            let key = match inbox.known(name).and_then(|k| k.binding) {
                Some(Binding::Bound(k) | Binding::Released { key: k, .. }) => Some(k),
                None => None,
            };
            (key, inbox.latest_epoch())
        };
        // Only a live member's, under the key its name is bound to, of a plausible version.
        let believed = live && key.is_some_and(|k| p.verify(&k)) && p.version() >> 32 <= latest;
        if !believed {
            self.counters.summary_chunks_refused += 1;
            return;
        }
        self.counters.summary_chunks_in += 1;
        if !self.take_chunk(&p, now) {
            self.counters.summaries_full += 1;
        }
    }

    /// Files a verified chunk; false when the bound on held entries refused it.
    fn take_chunk(&mut self, p: &Parsed<'_>, now: Instant) -> bool {
        let (version, total) = (p.version(), p.total());
        let held = self.summaries.held_entries();
        let r = self
            .summaries
            .reporters
            .entry(p.reporter().to_owned())
            .or_default();
        if r.complete.as_ref().is_some_and(|c| c.version >= version) {
            return true;
        }
        let fresh = match &r.assembly {
            Some(a) if a.version > version => return true,
            Some(a) => a.version < version || a.parts.len() != usize::from(total),
            None => true,
        };
        if fresh {
            r.assembly = Some(Assembly {
                version,
                omitted: p.omitted(),
                parts: vec![None; usize::from(total)],
                entries: 0,
                started: now,
            });
        }
        let Some(a) = r.assembly.as_mut() else {
            return true;
        };
        let index = usize::from(p.index());
        if a.parts.get(index).is_some_and(Option::is_some) {
            return true;
        }
        let (reports, bad) = p.reports();
        self.counters.decode_failures += bad;
        if a.entries + reports.len() > MAX_ENTRIES || held + reports.len() > MAX_HELD_ENTRIES {
            return false;
        }
        a.entries += reports.len();
        if let Some(slot) = a.parts.get_mut(index) {
            *slot = Some(reports);
        }
        if a.parts.iter().all(Option::is_some) {
            let omitted = a.omitted;
            let reports: Vec<PathReport> = a.parts.drain(..).flatten().flatten().collect();
            r.assembly = None;
            r.complete = Some(Complete {
                version,
                received: now,
                reports,
                omitted,
            });
            r.pulled_at = None;
            r.backoff = PULL_AFTER;
            self.summaries.taken += 1;
        }
        true
    }
}
