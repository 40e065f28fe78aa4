//! The member table: records joined with SWIM state, and the events that changes produce.
//!
//! A member appears (and [`Event::MemberUp`] fires) once SWIM holds it alive *and* its record
//! is known; a record that has not arrived by rumour is pulled from the member itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Bound::{Excluded, Unbounded};
use std::time::{Duration, Instant};

use foca::OwnedNotification;

use crate::alloc::contests;
use crate::evidence::Hold;
use crate::gossip::Gossip;
use crate::identity::NodeId;
use crate::record::NodeRecord;
use crate::wire::Kind;
use crate::Event;

/// How a member stands, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared down by the cluster.
    Down,
    /// Announced a graceful departure.
    Left,
}

/// One member as [`Gossip::members`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// Its latest record.
    pub record: &'a NodeRecord,
    /// Its state.
    pub state: MemberState,
    /// When this node saw it enter that state.
    pub since: Instant,
    /// SWIM has it down (or its suspicion ran out), but the data path heard from it within
    /// the evidence window: it stays routed (see [`Gossip::handle_evidence`]).
    pub held: bool,
    /// When the data path last heard from it, as reported to [`Gossip::handle_evidence`].
    pub heard: Option<Instant>,
}

/// A known record, with SWIM state once SWIM has reported the member.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) record: NodeRecord,
    /// The record as its owner sent it: what state dumps pass on.
    pub(crate) blob: Vec<u8>,
    pub(crate) state: Option<MemberState>,
    pub(crate) since: Instant,
    /// Latest data-path evidence that it is alive.
    pub(crate) heard: Option<Instant>,
    /// Kept up on that evidence against SWIM's verdict (see `evidence.rs`).
    pub(crate) hold: Option<Hold>,
}

impl Entry {
    pub(crate) fn is_live(&self) -> bool {
        matches!(self.state, Some(MemberState::Alive | MemberState::Suspect))
    }
}

/// A record pull is repeated at most this often per member.
pub(crate) const PULL_EVERY: Duration = Duration::from_secs(1);
/// Pulls sent per tick, so a joiner that lost part of a state dump catches up without a burst.
const PULLS_PER_TICK: usize = 32;
/// Ticks between anti-entropy record refreshes (1 s at the default tick).
const REFRESH_TICKS: u64 = 4;
/// A live member whose record still claims no subnet this long after it came up is pulled
/// directly: its claim was most likely gossiped while this node missed it (a burst of joins),
/// and the round-robin refresh, one member a second, would take up to N seconds to repair that.
const LACKING_AFTER: Duration = Duration::from_secs(2);
/// While isolated, seeds and remembered members are re-announced to this often.
const REJOIN_EVERY: Duration = Duration::from_secs(1);

impl Gossip {
    /// Members other than this node, by name, with state and since when.
    pub fn members(&self) -> impl Iterator<Item = Member<'_>> {
        self.members.values().filter_map(to_member)
    }

    /// One member by name.
    pub fn member(&self, name: &str) -> Option<Member<'_>> {
        self.members.get(name).and_then(to_member)
    }

    /// How many members are alive or suspect.
    pub fn num_live(&self) -> usize {
        self.members.values().filter(|e| e.is_live()).count()
    }

    /// Applies a record the inbox believed (see `inbox.rs`), and the forgets it carries.
    pub(crate) fn apply_record(&mut self, record: NodeRecord, blob: Vec<u8>, now: Instant) {
        if let Some(claim) = record.subnet {
            self.observe_stamp(claim.stamp);
        }
        if record.name == self.me.name {
            // Someone holds a copy of our record at least as new as ours (a previous life):
            // outbid it so the cluster converges on this one.
            if record.generation >= self.me.generation && record != self.me {
                self.me.generation = record.generation;
                self.publish_record();
            }
            return;
        }
        let forgets = match record.signer {
            Some(_) => record.forgets.clone(),
            None => Vec::new(),
        };
        let addr = record.gossip_addr;
        let name = record.name.clone();
        let swim_alive = self.active.contains_key(&addr);
        let mine = self.own_claim().map(|c| c.subnet);
        let touches_mine = mine.is_some_and(|m| contests(&record, m));
        match self.members.get_mut(&name) {
            Some(entry) => {
                if entry.record.gossip_addr != addr {
                    self.by_addr.remove(&entry.record.gossip_addr);
                }
                entry.record = record;
                entry.blob = blob;
                if entry.hold.is_some() && !swim_alive && entry.record.leaving {
                    // Held on its traffic when SWIM's notice of its departure came first.
                    entry.hold = None;
                    entry.state = Some(MemberState::Left);
                    entry.since = now;
                    self.events.push_back(Event::MemberLeft(name.clone()));
                } else if entry.is_live() {
                    self.events
                        .push_back(Event::MemberUpdated(entry.record.clone()));
                } else if entry.state == Some(MemberState::Down) && entry.record.leaving {
                    // The departure notice raced the leaving record, which was sent first but
                    // travels separately: it was a leave, not a death.
                    entry.state = Some(MemberState::Left);
                    self.events.push_back(Event::MemberLeft(name.clone()));
                } else if entry.state.is_none() && swim_alive {
                    entry.state = Some(MemberState::Alive);
                    entry.since = now;
                    self.events.push_back(Event::MemberUp(entry.record.clone()));
                }
            }
            None => {
                let state = swim_alive.then_some(MemberState::Alive);
                if swim_alive {
                    self.events.push_back(Event::MemberUp(record.clone()));
                }
                self.members.insert(
                    name.clone(),
                    Entry {
                        record,
                        blob,
                        state,
                        since: now,
                        heard: None,
                        hold: None,
                    },
                );
            }
        }
        if let Some(previous) = self.by_addr.insert(addr, name.clone()) {
            if previous != name {
                self.displace(&previous, now);
            }
        }
        self.missing.remove(&addr);
        if touches_mine {
            self.check_conflicts(now);
        }
        for f in forgets {
            self.apply_forget(&name, f);
        }
    }

    pub(crate) fn apply_notification(&mut self, n: OwnedNotification<NodeId>, now: Instant) {
        match n {
            OwnedNotification::MemberUp(id) => {
                self.active.insert(id.addr, id);
                if !self.by_addr.contains_key(&id.addr) {
                    self.missing.insert(id.addr);
                }
                self.mark_up(id.addr, now);
            }
            OwnedNotification::MemberDown(id) if self.active.get(&id.addr) == Some(&id) => {
                self.active.remove(&id.addr);
                self.missing.remove(&id.addr);
                self.mark_down(id.addr, now);
            }
            OwnedNotification::Rename(old, new) if self.active.remove(&old.addr).is_some() => {
                self.active.insert(new.addr, new);
            }
            OwnedNotification::Rejoin(_) => self.counters.rejoins += 1,
            _ => {}
        }
    }

    fn mark_up(&mut self, addr: SocketAddr, now: Instant) {
        let mine = self.own_claim().map(|c| c.subnet);
        let Some(entry) = entry_at(&self.by_addr, &mut self.members, &addr) else {
            self.pull(addr, now);
            return;
        };
        if entry.hold.is_some() {
            // Back under a renewed identity while we held it: it was alive all along.
            entry.hold = None;
            entry.state = Some(MemberState::Alive);
            entry.since = now;
            self.events
                .push_back(Event::MemberAlive(entry.record.name.clone()));
        } else if !entry.is_live() {
            entry.state = Some(MemberState::Alive);
            entry.since = now;
            let contested = mine.is_some_and(|m| contests(&entry.record, m));
            self.events.push_back(Event::MemberUp(entry.record.clone()));
            if contested {
                self.check_conflicts(now);
            }
        }
    }

    fn mark_down(&mut self, addr: SocketAddr, now: Instant) {
        if self.hold_down(addr, now) {
            return;
        }
        let Some(entry) = entry_at(&self.by_addr, &mut self.members, &addr) else {
            return;
        };
        if entry.is_live() {
            let name = entry.record.name.clone();
            let (state, event) = if entry.record.leaving {
                (MemberState::Left, Event::MemberLeft(name))
            } else {
                (MemberState::Down, Event::MemberDown(name))
            };
            entry.state = Some(state);
            entry.since = now;
            entry.hold = None;
            self.events.push_back(event);
        }
    }

    /// `name`'s address now belongs to another node (one re-installed under a new name): that
    /// member is gone, whatever SWIM says about the address.
    fn displace(&mut self, name: &str, now: Instant) {
        if let Some(entry) = self.members.get_mut(name) {
            if entry.is_live() {
                entry.state = Some(MemberState::Down);
                entry.since = now;
                entry.hold = None;
                self.events.push_back(Event::MemberDown(name.to_owned()));
            }
        }
    }

    /// Asks `addr` for its own record, at most once per [`PULL_EVERY`].
    pub(crate) fn pull(&mut self, addr: SocketAddr, now: Instant) {
        if self
            .pulled
            .get(&addr)
            .is_some_and(|&t| now.duration_since(t) < PULL_EVERY)
        {
            return;
        }
        self.pulled.insert(addr, now);
        self.send(addr, Kind::RecordPull, &[]);
    }

    /// Housekeeping: suspicion, held members, missing records, isolation, subnet claims.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.ticks += 1;
        self.scan_suspicion();
        self.release_held(now);
        self.pull_missing(now);
        self.rejoin_if_isolated(now);
        self.resync_tick(now);
        self.claim_tick(now);
        self.bound_tick(now);
        self.via.expire(now);
    }

    /// foca does not report Alive↔Suspect; read it off its member list.
    fn scan_suspicion(&mut self) {
        // Suspicion only changes along with a SWIM update, which foca then queues for
        // dissemination; with nothing queued and no one suspect there is nothing to find.
        if self.swim.updates_backlog() == 0 && !self.any_suspect {
            return;
        }
        let mut any_suspect = false;
        for m in self.swim.iter_membership_state() {
            if self.active.get(&m.id().addr) != Some(m.id()) {
                continue;
            }
            let Some(entry) = self
                .by_addr
                .get(&m.id().addr)
                .and_then(|n| self.members.get_mut(n))
            else {
                continue;
            };
            let name = || entry.record.name.clone();
            match (entry.state, m.state()) {
                (Some(MemberState::Alive), foca::State::Suspect) => {
                    entry.state = Some(MemberState::Suspect);
                    self.events.push_back(Event::MemberSuspect(name()));
                }
                (Some(MemberState::Suspect), foca::State::Alive) => {
                    entry.state = Some(MemberState::Alive);
                    entry.hold = None;
                    self.events.push_back(Event::MemberAlive(name()));
                }
                _ => {}
            }
            any_suspect |= entry.state == Some(MemberState::Suspect);
        }
        self.any_suspect = any_suspect;
    }

    /// Pulls records SWIM members lack and those of live members that still claim no subnet
    /// after [`LACKING_AFTER`], and every [`REFRESH_TICKS`] refreshes one known record
    /// (anti-entropy for an update every rumour missed). Each node walks the members in address
    /// order starting after its own address, so no member is pulled by everyone at once.
    fn pull_missing(&mut self, now: Instant) {
        let missing: Vec<SocketAddr> = self.missing.iter().take(PULLS_PER_TICK).copied().collect();
        for addr in missing {
            self.pull(addr, now);
        }
        let lacking: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|e| {
                e.state == Some(MemberState::Alive)
                    && e.record.subnet.is_none()
                    && now.saturating_duration_since(e.since) >= LACKING_AFTER
            })
            .map(|e| e.record.gossip_addr)
            .take(PULLS_PER_TICK)
            .collect();
        for addr in lacking {
            self.pull(addr, now);
        }
        if !self.ticks.is_multiple_of(REFRESH_TICKS) {
            return;
        }
        let next = match self.refresh_after {
            Some(after) => self.active.range((Excluded(after), Unbounded)).next(),
            None => None,
        }
        .or_else(|| self.active.iter().next())
        .map(|(a, _)| *a);
        if let Some(addr) = next {
            self.refresh_after = Some(addr);
            self.pull(addr, now);
        }
    }

    /// With no live member left, foca stops probing; re-announce to seeds and to members we
    /// remember so the node finds its way back after a partition.
    fn rejoin_if_isolated(&mut self, now: Instant) {
        if self.leaving || self.swim.num_members() > 0 {
            return;
        }
        if self
            .last_rejoin
            .is_some_and(|t| now.duration_since(t) < REJOIN_EVERY)
        {
            return;
        }
        self.last_rejoin = Some(now);
        let mut targets = self.seeds.clone();
        targets.extend(self.by_addr.keys().copied().take(4));
        for addr in targets {
            self.announce_to(addr, now);
        }
        if let Some(&seed) = self.seeds.first() {
            if !self.is_synced() {
                self.request_state(seed);
            }
        }
    }
}

/// The entry of the member at gossip address `addr`. A function of the two maps rather than a
/// method, so that callers keep the state machine's other fields to borrow.
pub(crate) fn entry_at<'a>(
    by_addr: &BTreeMap<SocketAddr, String>,
    members: &'a mut BTreeMap<String, Entry>,
    addr: &SocketAddr,
) -> Option<&'a mut Entry> {
    by_addr.get(addr).and_then(|n| members.get_mut(n))
}

fn to_member(e: &Entry) -> Option<Member<'_>> {
    Some(Member {
        record: &e.record,
        state: e.state?,
        since: e.since,
        held: e.hold.is_some(),
        heard: e.heard,
    })
}
