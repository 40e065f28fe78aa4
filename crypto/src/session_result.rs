//! Turning boringtun's results into a [`Session`]'s [`Action`]s: moving the answer to the
//! front of `out` and counting errors, handshakes and cookie replies on the way.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;

use super::*;

impl Session {
    pub(super) fn fail(&mut self, e: SessionError) -> Action {
        self.stats.count_error(e);
        Action::Error(e)
    }

    /// Turns boringtun's result into an [`Action`] on `out`, updating counters. `kind` is the
    /// type of the datagram decapsulated, if any.
    pub(super) fn finish(&mut self, raw: Raw, out: &mut [u8], kind: Option<MessageType>) -> Action {
        let (offset, len) = match raw {
            Raw::Done => return Action::Done,
            Raw::Err(e) => return self.fail(SessionError::from_wireguard(e, kind)),
            Raw::Net(o, l) | Raw::V4(o, l, _) | Raw::V6(o, l, _) => (o, l),
        };
        let Some(end) = offset.checked_add(len).filter(|&end| end <= out.len()) else {
            return self.fail(SessionError::Internal);
        };
        if offset != 0 {
            out.copy_within(offset..end, 0);
        }
        match raw {
            Raw::Net(..) => {
                let sent = WgDatagram::new_checked(&out[..len]).map(|d| d.message_type());
                if sent == Ok(MessageType::Data) {
                    self.data_sent += 1;
                }
                match (kind, sent) {
                    (Some(_), Ok(MessageType::CookieReply)) => self.stats.cookie_replies_sent += 1,
                    // We answered an initiation: complete once the initiator's first data
                    // arrives on the session it made (`Session::confirm_response`), as the
                    // kernel's WireGuard counts it. An initiator with another preshared key
                    // never sends any.
                    (Some(MessageType::Initiation), Ok(MessageType::Response)) => {
                        let index = WgDatagram::new_checked(&out[..len])
                            .ok()
                            .and_then(|d| d.sender_index());
                        self.answer.sent(index);
                    }
                    // We confirmed our own with a keepalive.
                    (Some(MessageType::Response), Ok(MessageType::Data)) => {
                        self.stats.handshakes += 1
                    }
                    _ => {}
                }
                Action::WriteToNetwork(len)
            }
            Raw::V4(_, _, a) => Action::WriteToTunnelV4(len, a),
            Raw::V6(_, _, a) => Action::WriteToTunnelV6(len, a),
            Raw::Done | Raw::Err(_) => Action::Done,
        }
    }
}

/// boringtun's result with the borrowed slice replaced by its place in `out`, so the borrow
/// ends before we touch `out` again.
pub(super) enum Raw {
    Done,
    Err(WireGuardError),
    Net(usize, usize),
    V4(usize, usize, std::net::Ipv4Addr),
    V6(usize, usize, std::net::Ipv6Addr),
}

impl Raw {
    pub(super) fn from(base: *const u8, r: TunnResult<'_>) -> Self {
        // boringtun always answers in `out`; the offset is 0 in every version we know, and is
        // computed rather than assumed. An out-of-range offset is caught in `finish`.
        let at = |s: &[u8]| ((s.as_ptr() as usize).wrapping_sub(base as usize), s.len());
        match r {
            TunnResult::Done => Raw::Done,
            TunnResult::Err(e) => Raw::Err(e),
            TunnResult::WriteToNetwork(s) => {
                let (o, l) = at(s);
                Raw::Net(o, l)
            }
            TunnResult::WriteToTunnelV4(s, a) => {
                let (o, l) = at(s);
                Raw::V4(o, l, a)
            }
            TunnResult::WriteToTunnelV6(s, a) => {
                let (o, l) = at(s);
                Raw::V6(o, l, a)
            }
        }
    }
}
