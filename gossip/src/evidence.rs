//! Data-path evidence, Lifeguard-style: a member whose authenticated traffic reached this node
//! moments ago is alive, whatever a lossy gossip path says about it.
//!
//! The daemon reports that traffic ([`Gossip::handle_evidence`]); gossip itself counts a SWIM
//! datagram from a member behind a NAT, taken through its translation (`via.rs`), the same
//! way: such a member is reachable only through the mappings its own datagrams make. While it is fresh (younger
//! than [`crate::Config::evidence_window`]) this node
//! - does not declare the member down on its own suspicion: the down-timer waits until the
//!   evidence would go stale, and the member has that much longer to refute; and
//! - does not act on a Down heard from others: the member is *held*, reported suspect, and no
//!   [`Event::MemberDown`] is raised, so its routes stay. It comes back under a renewed
//!   identity (and is alive again), or its evidence runs out and it is declared down then.
//!
//! [`Event::MemberHeld`] says when a Down is held (a postponed suspicion is routine under loss,
//! and only counted). Evidence never brings back a member SWIM does not know, and never
//! outlives the traffic: a node that dies stops sending, so it is withdrawn at most one window
//! later than SWIM alone would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::gossip::Gossip;
use crate::identity::NodeId;
use crate::view::{entry_at, Entry, MemberState};
use crate::Event;

/// Why a member is kept up against SWIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Its suspicion ran out here; the down-timer waits for the evidence to go stale.
    Suspicion,
    /// SWIM has it down; no [`Event::MemberDown`] until the evidence goes stale.
    Down,
}

impl Gossip {
    /// Authenticated data-path traffic from member `name` arrived at `at`. Names that are no
    /// member (static peers, members not known yet) are ignored. Sends nothing and wakes
    /// nothing: the evidence is read when a decision about the member comes up.
    pub fn handle_evidence(&mut self, name: &str, at: Instant) {
        if let Some(e) = self.members.get_mut(name) {
            e.heard = Some(e.heard.map_or(at, |h| h.max(at)));
        }
    }

    fn member_at(&self, addr: SocketAddr) -> Option<&Entry> {
        self.by_addr.get(&addr).and_then(|n| self.members.get(n))
    }

    /// Until when the evidence about the member at `addr` counts, if it counts at `now`.
    fn vouched_until(&self, addr: SocketAddr, now: Instant) -> Option<Instant> {
        fresh_until(self.member_at(addr)?, self.config.evidence_window, now)
    }

    /// A suspect's down-timer is due: if the data path vouches for it, the time to run the
    /// timer again instead (when the evidence would go stale).
    pub(crate) fn postpone_down(
        &mut self,
        timer: &foca::Timer<NodeId>,
        now: Instant,
    ) -> Option<Instant> {
        let foca::Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = timer
        else {
            return None;
        };
        // A timer the member has refuted since does nothing: let foca drop it.
        let live = self.swim.iter_membership_state().any(|m| {
            m.id() == member_id
                && m.incarnation() == *incarnation
                && m.state() == foca::State::Suspect
        });
        if !live {
            return None;
        }
        let until = self.vouched_until(member_id.addr, now)?;
        self.hold_member(member_id.addr, now, Hold::Suspicion);
        Some(until)
    }

    /// SWIM declared the member at `addr` down; true if the data path vouches for it, which
    /// then holds it instead.
    pub(crate) fn hold_down(&mut self, addr: SocketAddr, now: Instant) -> bool {
        // A departure is not a false death, and a member not up here has nothing to keep.
        let holdable = self
            .member_at(addr)
            .is_some_and(|e| e.is_live() && !e.record.leaving);
        if !holdable || self.vouched_until(addr, now).is_none() {
            return false;
        }
        self.hold_member(addr, now, Hold::Down);
        true
    }

    fn hold_member(&mut self, addr: SocketAddr, now: Instant, why: Hold) {
        let Some(entry) = entry_at(&self.by_addr, &mut self.members, &addr) else {
            return;
        };
        if !entry.is_live() {
            return;
        }
        if entry.state == Some(MemberState::Alive) {
            entry.state = Some(MemberState::Suspect);
            entry.since = now;
        }
        // So that the next tick's scan sees it refute.
        self.any_suspect = true;
        match (entry.hold, why) {
            (None, Hold::Suspicion) => self.counters.downs_postponed += 1,
            (None | Some(Hold::Suspicion), Hold::Down) => {
                self.counters.downs_held += 1;
                self.events
                    .push_back(Event::MemberHeld(entry.record.name.clone()));
            }
            _ => return,
        }
        entry.hold = Some(why);
    }

    /// Each tick: a held member SWIM has down whose evidence ran out is declared down now.
    pub(crate) fn release_held(&mut self, now: Instant) {
        let window = self.config.evidence_window;
        for entry in self.members.values_mut() {
            let swim_down = !self.active.contains_key(&entry.record.gossip_addr);
            let held = entry.hold == Some(Hold::Down);
            if held && swim_down && fresh_until(entry, window, now).is_none() {
                entry.hold = None;
                entry.state = Some(MemberState::Down);
                entry.since = now;
                self.events
                    .push_back(Event::MemberDown(entry.record.name.clone()));
            }
        }
    }
}

/// When `entry`'s evidence goes stale, if it is fresh at `now`.
fn fresh_until(entry: &Entry, window: Duration, now: Instant) -> Option<Instant> {
    let until = entry.heard? + window;
    (until > now).then_some(until)
}
