//! A blocking generic netlink socket for the `wireguard` family: the family id resolved once
//! with `CTRL_CMD_GETFAMILY`, then requests that wait for the kernel's acknowledgement (or the
//! end of a dump) and turn its error into an errno. Control plane only: a reconcile sends a few
//! messages, so a blocking socket with a receive timeout is simpler than another async
//! connection, and `genetlink` would pull a second `netlink-proto`.

use std::fmt::Debug;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    Emitable, NetlinkBuffer, NetlinkMessage, NetlinkPayload, ParseableParametrized, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_packet_wireguard::WireguardMessage;
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};

use super::error::{Error, Unavailable};

/// How long to wait for the kernel's answer to one request. It answers at once; this only
/// keeps a control thread from hanging on a socket that never will.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const FAMILY: &str = "wireguard";

pub(super) struct Genl {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl Genl {
    /// A socket in the current network namespace, with the `wireguard` family resolved.
    pub(super) fn connect() -> Result<Genl, Error> {
        let mut genl = Genl::open()?;
        genl.family = genl.resolve(FAMILY)?;
        Ok(genl)
    }

    /// The socket alone, no family resolved yet.
    fn open() -> Result<Genl, Error> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| Error::Io { what, source }
        };
        let mut socket =
            Socket::new(NETLINK_GENERIC).map_err(io("opening a generic netlink socket"))?;
        socket
            .bind_auto()
            .map_err(io("binding a generic netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connecting a generic netlink socket"))?;
        set_timeout(&socket).map_err(io("setting a generic netlink socket's timeout"))?;
        Ok(Genl {
            socket,
            family: 0,
            seq: 0,
        })
    }

    /// Sends each message, stopping at the first the kernel refuses.
    pub(super) fn set(&mut self, what: &str, msgs: Vec<WireguardMessage>) -> Result<(), Error> {
        for msg in msgs {
            let msg = GenlMessage::new(genl_header(&msg), msg, self.family);
            self.request(what, msg, NLM_F_REQUEST | NLM_F_ACK)?;
        }
        Ok(())
    }

    /// The dump that answers `msg` (a `WG_CMD_GET_DEVICE`).
    pub(super) fn dump(
        &mut self,
        what: &str,
        msg: WireguardMessage,
    ) -> Result<Vec<WireguardMessage>, Error> {
        let msg = GenlMessage::new(genl_header(&msg), msg, self.family);
        self.request(what, msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// The id of generic netlink family `name` (`CTRL_CMD_GETFAMILY`); ENOENT (no such family)
    /// means the kernel cannot configure a WireGuard device.
    fn resolve(&mut self, name: &str) -> Result<u16, Error> {
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
        });
        msg.finalize();
        let what = format!("resolving the generic netlink family `{name}`");
        let replies = match self.request(&what, msg, NLM_F_REQUEST | NLM_F_ACK) {
            Err(Error::Refused { errno, .. }) if errno == libc::ENOENT => {
                return Err(Unavailable::NoFamily.into())
            }
            other => other?,
        };
        replies
            .iter()
            .flat_map(|r| r.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| Error::Netlink {
                what,
                detail: "the answer carries no family id".into(),
            })
    }

    /// Sends `msg` and collects the answers of its sequence number until the acknowledgement,
    /// the end of the dump, or an error.
    fn request<F>(&mut self, what: &str, msg: GenlMessage<F>, flags: u16) -> Result<Vec<F>, Error>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        let io = |source| Error::Io {
            what: what.to_string(),
            source,
        };
        self.socket.send(&buf, 0).map_err(io)?;
        let mut out = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(io)?;
            for m in messages::<F>(what, &datagram)? {
                if m.header.sequence_number != seq {
                    continue; // the late answer to a request that timed out
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner.payload),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Error::Refused {
                                what: what.to_string(),
                                errno: code.get().abs(),
                            }),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }
}

fn genl_header(msg: &WireguardMessage) -> GenlHeader {
    GenlHeader {
        cmd: msg.command(),
        version: msg.version(),
    }
}

/// The netlink messages in one datagram (a dump packs several).
fn messages<F>(what: &str, datagram: &[u8]) -> Result<Vec<NetlinkMessage<GenlMessage<F>>>, Error>
where
    F: ParseableParametrized<[u8], GenlHeader> + Debug,
{
    let decode = |e: netlink_packet_core::DecodeError| Error::Netlink {
        what: what.to_string(),
        detail: e.to_string(),
    };
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest).map_err(decode)?.length() as usize;
        let (this, _) = rest.split_at(len);
        out.push(NetlinkMessage::<GenlMessage<F>>::deserialize(this).map_err(decode)?);
        // Messages are 4-byte aligned; the last one may end the datagram unpadded.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(out)
}

fn set_timeout(socket: &Socket) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The request and acknowledgement path against the real kernel: `nlctrl` itself is
    /// always there, at its fixed id (`GENL_ID_CTRL`).
    #[test]
    fn a_family_resolves_and_an_unknown_one_is_enoent() {
        let mut genl = Genl::open().unwrap();
        assert_eq!(genl.resolve("nlctrl").unwrap(), 0x10);
        match genl.resolve("meshd-nonesuch") {
            Err(Error::Unavailable(Unavailable::NoFamily)) => {}
            other => panic!("{other:?}"),
        }
        // The socket stays usable after a refusal.
        assert_eq!(genl.resolve("nlctrl").unwrap(), 0x10);
    }

    /// A dump: many families, several to a datagram, ended by `NLMSG_DONE`.
    #[test]
    fn a_dump_collects_every_message_until_done() {
        let mut genl = Genl::open().unwrap();
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: Vec::new(),
        });
        msg.finalize();
        let families = genl
            .request("listing families", msg, NLM_F_REQUEST | NLM_F_DUMP)
            .unwrap();
        let names: Vec<&str> = families
            .iter()
            .flat_map(|f| f.nlas.iter())
            .filter_map(|a| match a {
                GenlCtrlAttrs::FamilyName(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        assert!(names.contains(&"nlctrl"), "{names:?}");
        assert!(names.len() > 1, "{names:?}");
        assert_eq!(names.len(), families.len());
    }

    /// Bytes that are not netlink are an error, not a panic.
    #[test]
    fn a_bad_datagram_is_an_error() {
        let mut good = vec![0u8; 20];
        good[..4].copy_from_slice(&20u32.to_ne_bytes());
        good[4..6].copy_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        assert_eq!(messages::<GenlCtrl>("t", &good).unwrap().len(), 1);
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert_eq!(messages::<GenlCtrl>("t", &two).unwrap().len(), 2);
        for bad in [
            &good[..10],    // shorter than a header
            &two[..30],     // the second message cut short
            &[0u8; 16][..], // a zero length
        ] {
            let got = messages::<GenlCtrl>("t", bad);
            assert!(matches!(got, Err(Error::Netlink { .. })), "{got:?}");
        }
        let mut long = good.clone();
        long[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(messages::<GenlCtrl>("t", &long).is_err());
    }
}
