//! An idle worker's sleep, on an epoll instance of its own: its descriptors (the TUN queue, or
//! the UDP socket and its flow ports) and the stop eventfd are registered once, so each sleep
//! and each wake-up costs one `epoll_wait`, where `poll` set up and tore down a wait on every
//! descriptor each time. At a low packet rate every round trip crosses four such sleeps and
//! wake-ups, on the path the round trip waits for (BENCHMARKS.md, issue 25). Level-triggered,
//! as `poll` is: what is ready when the worker sleeps wakes it at once. Where the kernel
//! refuses an epoll instance, the worker keeps `poll` ([`wait_any`], [`wait_or_stop`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::flows::MAX_FLOW_PORTS;
use super::io::Stop;

/// The main descriptor's token; flow port `i`'s is `1 + i`; the stop eventfd's is `STOP`.
const STOP: u64 = u64::MAX;

pub(crate) struct Waiter {
    epoll: OwnedFd,
    timeout: i32,
    /// The main descriptor and the events it waits for ([`Waiter::watch_main`]).
    main: RawFd,
    wanted: u32,
}

impl Waiter {
    /// An epoll instance for `fd` and `others` (at most [`MAX_FLOW_PORTS`]), ready for
    /// `events`, and the stop eventfd.
    pub(crate) fn new(
        fd: RawFd,
        others: &[RawFd],
        events: libc::c_short,
        stop: &Stop,
    ) -> io::Result<Waiter> {
        // SAFETY: epoll_create1 with a valid flag; a non-negative result is ours.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` was just returned by epoll_create1 and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let (stop_fd, timeout) = stop.poll_slot();
        let wanted = events as u16 as u32;
        let add = |fd: RawFd, events: u32, token: u64| -> io::Result<()> {
            let mut ev = libc::epoll_event { events, u64: token };
            // SAFETY: registers a descriptor the caller keeps open with an event we own.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        add(fd, wanted, 0)?;
        for (i, o) in others.iter().take(MAX_FLOW_PORTS).enumerate() {
            add(*o, wanted, 1 + i as u64)?;
        }
        if stop_fd >= 0 {
            add(stop_fd, libc::EPOLLIN as u32, STOP)?;
        }
        Ok(Waiter {
            epoll,
            timeout,
            main: fd,
            wanted,
        })
    }

    /// Stop (`on = false`) or resume waking for the main descriptor; whether the kernel did
    /// it. Stopped, what arrives on it wakes nobody; resumed, what it holds by then wakes the
    /// waiter at once (level-triggered): nothing that arrived meanwhile is lost. Another
    /// thread may call it while the waiter sleeps (the RX worker's claim on a TX worker's
    /// queue, see [`super::rx_worker`]).
    pub(crate) fn watch_main(&self, on: bool) -> bool {
        let mut ev = libc::epoll_event {
            events: if on { self.wanted } else { 0 },
            u64: 0,
        };
        // SAFETY: modifies the registration of a descriptor the owner keeps open.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                self.main,
                &mut ev,
            ) == 0
        }
    }

    /// Sleep until a descriptor is ready or the stop is set; `ready[i]` says whether flow
    /// port `i` is. Whether the main descriptor is (false after a wake-up by another, the stop,
    /// the timeout, or an error).
    pub(crate) fn wait(&self, ready: &mut [bool]) -> bool {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 2 + MAX_FLOW_PORTS];
        // SAFETY: epoll_wait writes at most `evs.len()` events into the array we own.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                evs.as_mut_ptr(),
                evs.len() as i32,
                self.timeout,
            )
        };
        ready.iter_mut().for_each(|r| *r = false);
        let mut main = false;
        for ev in evs.iter().take(n.max(0) as usize) {
            match ev.u64 {
                0 => main = true,
                STOP => {}
                token => {
                    if let Some(r) = ready.get_mut(token as usize - 1) {
                        *r = true;
                    }
                }
            }
        }
        main
    }
}

/// Sleep until `fd` or one of `others` (at most [`MAX_FLOW_PORTS`]) is ready for `events`, or
/// `stop` is set; `ready[i]` says whether `others[i]` is.
pub(crate) fn wait_any(
    fd: &impl AsRawFd,
    others: &[RawFd],
    events: libc::c_short,
    ready: &mut [bool],
    stop: &Stop,
) {
    let none = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let (stop_fd, timeout) = stop.poll_slot();
    let mut p = [none; 2 + MAX_FLOW_PORTS];
    let n = 1 + others.len().min(MAX_FLOW_PORTS);
    // The stop descriptor goes last, after the slots `ready` reads.
    p[n] = libc::pollfd {
        fd: stop_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    for (slot, fd) in p
        .iter_mut()
        .zip(std::iter::once(fd.as_raw_fd()).chain(others.iter().copied()))
    {
        *slot = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
    }
    // SAFETY: `n + 1` valid pollfds for the duration of the call (a -1 descriptor is ignored).
    unsafe {
        libc::poll(p.as_mut_ptr(), (n + 1) as libc::nfds_t, timeout);
    }
    for (r, p) in ready.iter_mut().zip(&p[1..n]) {
        *r = p.revents != 0;
    }
}

/// Sleep until `fd` is ready for `events` or `stop` is set.
pub(crate) fn wait_or_stop(fd: &impl AsRawFd, events: libc::c_short, stop: &Stop) {
    let (stop_fd, timeout) = stop.poll_slot();
    let mut p = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds for the duration of the call (a -1 descriptor is ignored).
    unsafe {
        libc::poll(p.as_mut_ptr(), 2, timeout);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn wakes_for_the_main_socket_a_flow_port_and_the_stop() {
        let main = UdpSocket::bind("127.0.0.1:0").unwrap();
        let flow = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stop = Stop::new();
        let w = Waiter::new(main.as_raw_fd(), &[flow.as_raw_fd()], libc::POLLIN, &stop).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ready = [true];
        tx.send_to(b"a", main.local_addr().unwrap()).unwrap();
        assert!(w.wait(&mut ready));
        assert_eq!(ready, [false], "the main socket is not a flow port");
        let mut buf = [0u8; 8];
        main.recv(&mut buf).unwrap();
        tx.send_to(b"b", flow.local_addr().unwrap()).unwrap();
        assert!(!w.wait(&mut ready), "woken by the flow port alone");
        assert_eq!(ready, [true]);
        flow.recv(&mut buf).unwrap();
        // Nothing ready but the stop: its eventfd wakes it, not the timeout.
        stop.set();
        assert!(!w.wait(&mut ready), "woken by the stop");
        assert_eq!(ready, [false]);
    }

    /// What the RX worker's claim rests on: with its wake-up stopped, a readable main
    /// descriptor is not reported (a flow port's datagram is, in the same wait: the wait did
    /// look); resumed, what arrived meanwhile is reported at once.
    #[test]
    fn a_stopped_main_descriptor_wakes_nobody_and_loses_nothing() {
        let main = UdpSocket::bind("127.0.0.1:0").unwrap();
        let flow = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stop = Stop::new();
        let w = Waiter::new(main.as_raw_fd(), &[flow.as_raw_fd()], libc::POLLIN, &stop).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ready = [false];
        assert!(w.watch_main(false));
        tx.send_to(b"a", main.local_addr().unwrap()).unwrap();
        tx.send_to(b"b", flow.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        // The staged fault: the main socket holds a datagram, which a wait does not report.
        main.set_nonblocking(true).unwrap();
        assert_eq!(
            main.peek(&mut buf).unwrap(),
            1,
            "the main socket is readable"
        );
        assert!(!w.wait(&mut ready), "the main socket is not reported");
        assert_eq!(ready, [true], "the flow port is");
        flow.recv(&mut buf).unwrap();
        assert!(w.watch_main(true));
        assert!(
            w.wait(&mut ready),
            "resumed: the datagram that came meanwhile wakes it"
        );
        assert_eq!(ready, [false]);
        assert_eq!(main.recv(&mut buf).unwrap(), 1);
    }
}
