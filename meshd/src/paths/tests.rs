#![allow(clippy::unwrap_used)]
use super::*;

const SIZE: u16 = 1450;

fn vxlan_peer(now: Instant) -> PeerPath {
    PeerPath::new(
        vec![Offer {
            kind: PathKind::KernelVxlan,
            available: Ok(()),
        }],
        PathKind::Userspace,
        None,
        None,
        SIZE,
        now,
    )
}

fn probe(p: &mut PeerPath, kind: PathKind, ok: bool, now: Instant) -> Option<Move> {
    p.record(kind, ok, now);
    p.decide(now)
}

fn at(t0: Instant, secs: f64) -> Instant {
    t0 + Duration::from_secs_f64(secs)
}

#[test]
fn a_new_peer_moves_up_at_its_first_passing_probe() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    assert_eq!(p.current(), PathKind::Userspace);
    assert_eq!(p.reason(t0).as_deref(), Some("probing kernel-vxlan"));
    assert_eq!(p.decide(t0), None);
    let m = probe(&mut p, PathKind::KernelVxlan, true, at(t0, 0.5)).unwrap();
    assert_eq!(
        (m.from, m.to, m.demotion),
        (PathKind::Userspace, PathKind::KernelVxlan, false)
    );
    assert_eq!(p.reason(at(t0, 0.5)), None);
    assert_eq!(p.moves(), 1);
}

#[test]
fn three_lost_probes_demote_and_the_return_waits_for_the_quiet_period_once() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    probe(&mut p, PathKind::KernelVxlan, true, t0);
    assert_eq!(p.current(), PathKind::KernelVxlan);
    // Two losses are not enough; the third is.
    assert_eq!(
        probe(&mut p, PathKind::KernelVxlan, false, at(t0, 1.0)),
        None
    );
    assert_eq!(
        probe(&mut p, PathKind::KernelVxlan, false, at(t0, 1.5)),
        None
    );
    let m = probe(&mut p, PathKind::KernelVxlan, false, at(t0, 2.0)).unwrap();
    assert!(m.demotion);
    assert_eq!(m.to, PathKind::Userspace);
    let why = p.reason(at(t0, 2.0)).unwrap();
    assert!(
        why.starts_with("probes at 1450 B lost on kernel-vxlan since "),
        "{why}"
    );
    assert!(why.ends_with(", retry in 10 s"), "{why}");
    // Repaired: passing again, but the peer stays put for the quiet period.
    let mut t = 3.0;
    while t < 12.9 {
        assert_eq!(
            probe(&mut p, PathKind::KernelVxlan, true, at(t0, t)),
            None,
            "at {t}"
        );
        t += 0.5;
    }
    let why = p.reason(at(t0, 12.9)).unwrap();
    assert_eq!(why, "kernel-vxlan passing probes again, retry in 1 s");
    let m = probe(&mut p, PathKind::KernelVxlan, true, at(t0, 13.0)).unwrap();
    assert_eq!((m.to, m.demotion), (PathKind::KernelVxlan, false));
    for i in 0..40 {
        assert_eq!(
            probe(
                &mut p,
                PathKind::KernelVxlan,
                true,
                at(t0, 13.5 + f64::from(i) * 0.5)
            ),
            None
        );
    }
    assert_eq!(p.moves(), 3, "up, down, up: once each");
}

#[test]
fn a_loss_in_the_quiet_period_starts_it_again_and_each_demotion_doubles_it() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    probe(&mut p, PathKind::KernelVxlan, true, t0);
    for i in 1..=3 {
        probe(&mut p, PathKind::KernelVxlan, false, at(t0, f64::from(i)));
    }
    assert_eq!(p.current(), PathKind::Userspace);
    probe(&mut p, PathKind::KernelVxlan, true, at(t0, 4.0));
    probe(&mut p, PathKind::KernelVxlan, false, at(t0, 9.0));
    probe(&mut p, PathKind::KernelVxlan, true, at(t0, 10.0));
    assert_eq!(
        probe(&mut p, PathKind::KernelVxlan, true, at(t0, 19.0)),
        None
    );
    assert!(probe(&mut p, PathKind::KernelVxlan, true, at(t0, 20.0)).is_some());
    // Second demotion: 20 s.
    for i in 1..=3 {
        probe(
            &mut p,
            PathKind::KernelVxlan,
            false,
            at(t0, 20.0 + f64::from(i)),
        );
    }
    assert_eq!(p.current(), PathKind::Userspace);
    assert!(p.reason(at(t0, 23.0)).unwrap().ends_with("retry in 20 s"));
    probe(&mut p, PathKind::KernelVxlan, true, at(t0, 24.0));
    assert_eq!(
        probe(&mut p, PathKind::KernelVxlan, true, at(t0, 43.0)),
        None
    );
    assert!(probe(&mut p, PathKind::KernelVxlan, true, at(t0, 44.0)).is_some());
    assert_eq!(quiet(1), BASE_QUIET);
    assert_eq!(quiet(2), BASE_QUIET * 2);
    assert_eq!(quiet(30), MAX_QUIET);
}

#[test]
fn a_failing_host_gw_steps_down_to_a_passing_vxlan_else_to_userspace() {
    let t0 = Instant::now();
    let offers = vec![
        Offer {
            kind: PathKind::HostGw,
            available: Ok(()),
        },
        Offer {
            kind: PathKind::KernelVxlan,
            available: Ok(()),
        },
    ];
    let mut p = PeerPath::new(offers.clone(), PathKind::Userspace, None, None, SIZE, t0);
    probe(&mut p, PathKind::KernelVxlan, true, t0);
    assert_eq!(p.current(), PathKind::KernelVxlan);
    assert_eq!(p.reason(t0).as_deref(), Some("probing host-gw"));
    probe(&mut p, PathKind::HostGw, true, t0);
    assert_eq!(p.current(), PathKind::HostGw);
    for i in 1..=3 {
        p.record(PathKind::KernelVxlan, true, at(t0, f64::from(i)));
        probe(&mut p, PathKind::HostGw, false, at(t0, f64::from(i)));
    }
    assert_eq!(p.current(), PathKind::KernelVxlan);
    assert!(p.reason(at(t0, 3.0)).unwrap().contains("lost on host-gw"));
    // Both broken: vxlan's own losses take it to userspace.
    let mut q = PeerPath::new(
        offers,
        PathKind::Userspace,
        None,
        Some(PathKind::HostGw),
        SIZE,
        t0,
    );
    assert_eq!(q.current(), PathKind::HostGw, "adopted");
    for i in 1..=3 {
        q.record(PathKind::KernelVxlan, false, at(t0, f64::from(i)));
        probe(&mut q, PathKind::HostGw, false, at(t0, f64::from(i)));
    }
    assert_eq!(q.current(), PathKind::Userspace);
}

#[test]
fn what_is_not_offered_is_said_and_never_taken() {
    let t0 = Instant::now();
    let refused = Refusal::from_errno(95);
    let mut p = PeerPath::new(
        vec![Offer {
            kind: PathKind::KernelVxlan,
            available: Err(NotOffered::Refused(refused)),
        }],
        PathKind::Userspace,
        None,
        Some(PathKind::KernelVxlan),
        SIZE,
        t0,
    );
    assert_eq!(
        p.current(),
        PathKind::Userspace,
        "an adopted path that is gone is not kept"
    );
    assert_eq!(p.probed().count(), 0);
    assert_eq!(
        p.reason(t0).as_deref(),
        Some("kernel vxlan unavailable (Operation not supported)")
    );
    assert_eq!(probe(&mut p, PathKind::KernelVxlan, true, t0), None);
    let q = PeerPath::new(
        vec![
            Offer {
                kind: PathKind::HostGw,
                available: Err(NotOffered::NotOnSegment),
            },
            Offer {
                kind: PathKind::KernelVxlan,
                available: Ok(()),
            },
        ],
        PathKind::Userspace,
        None,
        Some(PathKind::KernelVxlan),
        SIZE,
        t0,
    );
    assert_eq!(
        q.reason(t0).as_deref(),
        Some("host-gw: not on this node's L2 segment")
    );
    let r = PeerPath::new(
        Vec::new(),
        PathKind::Userspace,
        Some("datapath = \"userspace\"".into()),
        None,
        SIZE,
        t0,
    );
    assert_eq!(r.reason(t0).as_deref(), Some("datapath = \"userspace\""));
}

#[test]
fn a_kernel_floor_is_kept_failing_and_says_so() {
    let t0 = Instant::now();
    let mut p = PeerPath::new(
        vec![Offer {
            kind: PathKind::KernelVxlan,
            available: Ok(()),
        }],
        PathKind::KernelVxlan,
        None,
        None,
        SIZE,
        t0,
    );
    assert_eq!(p.current(), PathKind::KernelVxlan);
    for i in 1..=3 {
        assert_eq!(
            probe(&mut p, PathKind::KernelVxlan, false, at(t0, f64::from(i))),
            None
        );
    }
    let why = p.reason(at(t0, 3.0)).unwrap();
    assert!(
        why.ends_with("; datapath = \"kernel\": no fallback"),
        "{why}"
    );
    assert_eq!(p.moves(), 0);
}

#[test]
fn clock_is_utc_hours_minutes_seconds() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 12 * 3600 + 3 * 60 + 4);
    assert_eq!(clock(t), "12:03:04");
}

/// Sends the probe `p` asks for on kernel VXLAN at `t` seconds; `passes` says whether a probe
/// of that size gets through. Returns the size and the move made.
fn sized(
    p: &mut PeerPath,
    t0: Instant,
    t: f64,
    passes: impl Fn(u16) -> bool,
) -> (u16, Option<Move>) {
    let size = p.probe_size(PathKind::KernelVxlan);
    p.record_probe(PathKind::KernelVxlan, size, passes(size), at(t0, t));
    (size, p.decide(at(t0, t)))
}

#[test]
fn probes_are_pod_sized_until_one_passes_then_one_in_four() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    // A path that loses everything is probed at the pod size only.
    for i in 0..5 {
        assert_eq!(sized(&mut p, t0, f64::from(i), |_| false).0, SIZE);
    }
    assert_eq!(p.current(), PathKind::Userspace);
    let sizes: Vec<u16> = (5..14)
        .map(|i| sized(&mut p, t0, f64::from(i), |_| true).0)
        .collect();
    let (s, f) = (SMALL_PROBE, SIZE);
    assert_eq!(sizes, [f, s, s, s, f, s, s, s, f]);
    assert_eq!(p.current(), PathKind::KernelVxlan);
    // A lost small probe: the next ones are pod-sized until one passes.
    assert_eq!(sized(&mut p, t0, 14.0, |_| false), (s, None));
    assert_eq!(sized(&mut p, t0, 15.0, |_| true), (f, None));
    assert_eq!(sized(&mut p, t0, 16.0, |_| true).0, s);
    assert_eq!(p.moves(), 1);
}

#[test]
fn an_mtu_black_hole_demotes_though_small_probes_pass() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    for i in 0..8 {
        sized(&mut p, t0, f64::from(i), |_| true);
    }
    assert_eq!(p.current(), PathKind::KernelVxlan);
    // From now on only small packets get through.
    let mut demoted = None;
    for i in 8..20 {
        let (size, m) = sized(&mut p, t0, f64::from(i), |size| size < 1000);
        if let Some(m) = m {
            demoted = Some((i, size, m));
            break;
        }
    }
    let (i, size, m) = demoted.unwrap();
    assert!(m.demotion && m.to == PathKind::Userspace, "{m:?}");
    assert_eq!(size, SIZE, "the losses that demote are pod-sized");
    assert!(
        i < 8 + FULL_PROBE_EVERY as i32 + 3,
        "within a pod-sized probe's turn and two more: at {i}"
    );
    let why = p.reason(at(t0, f64::from(i))).unwrap();
    assert!(
        why.starts_with("probes at 1450 B lost on kernel-vxlan since "),
        "{why}"
    );
    // Small probes passing in between do not make the path look repaired.
    for j in 1..=30 {
        let t = f64::from(i + j);
        assert_eq!(sized(&mut p, t0, t, |size| size < 1000).1, None, "at {t}");
    }
    assert_eq!(p.current(), PathKind::Userspace);
}

#[test]
fn a_small_probe_passing_while_a_pod_sized_one_fails_changes_nothing() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    probe(&mut p, PathKind::KernelVxlan, true, t0);
    p.record(PathKind::KernelVxlan, false, at(t0, 1.0));
    p.record_probe(PathKind::KernelVxlan, SMALL_PROBE, true, at(t0, 1.2));
    p.record(PathKind::KernelVxlan, false, at(t0, 1.5));
    p.record_probe(PathKind::KernelVxlan, SMALL_PROBE, true, at(t0, 1.7));
    let m = probe(&mut p, PathKind::KernelVxlan, false, at(t0, 2.0)).unwrap();
    assert!(m.demotion);
}

#[test]
fn without_probe_sockets_the_status_says_so_instead_of_empty_probe_counts() {
    let t0 = Instant::now();
    let mut p = vxlan_peer(t0);
    p.set_unprobed("cannot open the probe sockets (Operation not permitted)".into());
    assert_eq!(
        p.reason(t0).as_deref(),
        Some(
            "paths not probed, the peer stays where it is: cannot open the probe sockets \
             (Operation not permitted)"
        )
    );
    assert!(p.probe_counts().is_empty(), "no `probes 0/0 lost`");
    assert_eq!(p.decide(at(t0, 60.0)), None);
    // Nothing to probe (the floor is all there is): nothing to say either.
    let mut floor = PeerPath::new(Vec::new(), PathKind::Userspace, None, None, SIZE, t0);
    floor.set_unprobed("no sockets".into());
    assert_eq!(floor.reason(t0), None);
}
