//! Traceroute by ICMP echo requests (`protocol: icmp`), as `traceroute -I` and `mtr` probe:
//! for paths whose firewalls drop UDP to unused ports but let pings through. Unprivileged: an
//! ICMP datagram socket ("ping socket", allowed by `net.ipv4.ping_group_range`), no raw
//! socket. Each probe leaves with the TTL (IPv6: unicast hop limit) of its hop; with
//! `IP_RECVERR` / `IPV6_RECVERR` the routers' "time exceeded" (and any "unreachable") arrive
//! on the socket's error queue with the router's address, quoting the echo; the host answers
//! with an echo reply on the socket's ordinary queue.
//!
//! A round has a socket of its own, not the shared socket of
//! [`icmp_socket`](super::super::icmp_socket): the TTL is a socket option, and the kernel
//! hands a ping socket's errors and replies to it by the echo identifier, which is the
//! socket's own. That identifier is the round's "port": the socket is bound to
//! [`TracerouteCheck::source_port_for`] (any free one if that is taken), so it is the same in
//! every round of a target.
//!
//! Flow identity (Paris traceroute): a load balancer hashing an ICMP echo reads addresses,
//! protocol and the first bytes of the ICMP header (type, code, checksum, and perhaps the
//! identifier). Type, code and identifier are constant; the sequence number (which tells the
//! probe: TTL and index, quoted back by every router) varies, and the payload compensates it
//! word for word, as it compensates the round's random token: the one's-complement sum of the
//! message, and with it the checksum the kernel computes, is the same for every probe of
//! every round of the target.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use fiberstack_model::{CheckKind, Sample, TracerouteCheck};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use serde_json::json;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::super::icmp::PERMIT_HINT;
use super::super::icmp_socket::open_raw;
use super::{Answer, Probes, Queued, Round, down, probe_hops, read_error_queue};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// The ICMP echo header: type, code, checksum, identifier, sequence number.
const HEADER: usize = 8;
/// The echo's payload: the sequence number's balance (2 bytes), the round's token (8), the
/// token's balance (2).
pub const PAYLOAD: usize = 12;
/// An echo request as the socket sends it.
pub const ECHO: usize = HEADER + PAYLOAD;

/// The sequence number of probe `index` of `ttl`.
fn sequence(ttl: u8, index: u8) -> u16 {
    u16::from_be_bytes([ttl, index])
}

/// One's-complement sum of big-endian 16-bit words, folded.
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The echo request of probe `index` of `ttl` in `round`: checksum and identifier left 0 for
/// the kernel to fill in. Its one's-complement sum is the same for every probe and every
/// round (see the module's text).
pub fn echo(round: &Round, v4: bool, ttl: u8, index: u8) -> [u8; ECHO] {
    let seq = sequence(ttl, index);
    let token = round.token();
    let mut p = [0u8; ECHO];
    p[0] = if v4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..10].copy_from_slice(&(!seq).to_be_bytes());
    p[10..18].copy_from_slice(&token);
    p[18..20].copy_from_slice(&(!ones_sum(&token)).to_be_bytes());
    p
}

/// What an ICMP message tells of the probe it names: its TTL and index, its token.
type Named<'a> = (Option<(u8, u8)>, Option<&'a [u8]>);

/// The probe an ICMP message names, read from its header on: an echo request a router
/// quotes (`kind` the request's type) or the host's echo reply (the reply's type). `None`
/// when it is another kind of message; otherwise the probe's TTL and index (from the
/// sequence number) and its token, each when the message holds that much.
pub fn probe_of(message: &[u8], kind: u8) -> Option<Named<'_>> {
    if message.len() < HEADER {
        // Quoted without its ICMP header (RFC 792 asks for 8 bytes; a router may not care).
        return Some((None, None));
    }
    if message[0] != kind || message[1] != 0 {
        return None;
    }
    let probe = Some((message[6], message[7]));
    Some((probe, message.get(HEADER + 2..HEADER + 10)))
}

/// What an ICMP error (classified as for a UDP probe) says about an echo: a router's "time
/// exceeded", or an "unreachable" — for an echo even "port unreachable" is only that, as the
/// host answers echoes with replies.
fn for_echo(answer: Answer, v4: bool) -> Answer {
    match answer {
        Answer::Reached if v4 => Answer::Unreachable(3, 3),
        Answer::Reached => Answer::Unreachable(1, 4),
        a => a,
    }
}

/// Opens the round's ping socket towards `ip`: bound to the echo identifier `ident` (any
/// identifier when that one is taken), connected, with ICMP errors queued and packets
/// time-stamped by the kernel. Returns the socket and its identifier.
pub fn open_socket(ip: IpAddr, ident: u16) -> io::Result<(UdpSocket, u16)> {
    let v4 = ip.is_ipv4();
    let unspecified = |port: u16| -> SocketAddr {
        if v4 {
            (std::net::Ipv4Addr::UNSPECIFIED, port).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, port).into()
        }
    };
    let open = |port: u16| -> io::Result<socket2::Socket> {
        let socket = open_raw(v4)?;
        socket.bind(&unspecified(port).into())?;
        Ok(socket)
    };
    let socket = match open(ident) {
        Ok(s) => s,
        // Another ping socket holds the identifier (a round of this target still running, or
        // `ping`): this round takes any; its path may then differ on a balanced network.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => open(0)?,
        Err(e) => return Err(e),
    };
    socket.connect(&SocketAddr::new(ip, 0).into())?;
    if v4 {
        setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv6RecvErr, &true)?;
    }
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
    socket.set_nonblocking(true)?;
    let ident = socket.local_addr()?.as_socket().map_or(ident, |a| a.port());
    Ok((UdpSocket::from_std(socket.into())?, ident))
}

/// What the socket had for the round.
enum Got {
    /// An ICMP error off the error queue.
    Error(Queued),
    /// An echo reply (from its ICMP header on).
    Reply {
        message: Vec<u8>,
        from: Option<IpAddr>,
        at: SystemTime,
    },
    /// The error the kernel also leaves on the socket for each ICMP error (and reports on
    /// the next read or send): the error queue tells of it.
    Pending(io::Error),
}

/// Takes the next ICMP error or reply, without waiting: the error queue first.
fn read(socket: &UdpSocket) -> io::Result<Got> {
    match read_error_queue(socket) {
        Ok(q) => return Ok(Got::Error(q)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let mut data = [0u8; 64];
    let mut control = nix::cmsg_space!(libc::timespec);
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = match recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m,
        Err(Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(Errno::EINTR) => return Err(io::ErrorKind::Interrupted.into()),
        Err(e) => return Ok(Got::Pending(e.into())),
    };
    let len = msg.bytes;
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| IpAddr::V4(v4.ip()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
    });
    let mut at = SystemTime::now();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
            at = SystemTime::UNIX_EPOCH
                + Duration::new(ts.tv_sec().max(0) as u64, ts.tv_nsec().max(0) as u32);
        }
    }
    Ok(Got::Reply {
        message: data[..len.min(data.len())].to_vec(),
        from,
        at,
    })
}

/// One ICMP round towards `ip` with the echo identifier `ident` (when free).
pub async fn run(ip: IpAddr, check: &TracerouteCheck, ident: u16) -> Sample {
    let (socket, ident) = match open_socket(ip, ident) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return down(
                CheckKind::Traceroute,
                ip.to_string(),
                format!("{PERMIT_HINT} ({e})"),
            );
        }
        Err(e) => {
            return down(
                CheckKind::Traceroute,
                ip.to_string(),
                format!("cannot open an ICMP socket towards {ip}: {e}"),
            );
        }
    };
    let mut sample = round(&socket, ip, check).await;
    sample.metadata.insert("protocol".into(), json!("icmp"));
    sample.metadata.insert("echo_id".into(), json!(ident));
    sample
}

/// Echo requests: routers answer on the socket's error queue, the host with an echo reply on
/// its ordinary queue.
struct Echoes {
    ip: IpAddr,
    v4: bool,
    /// Errors left on the socket in a row, this hop: one per ICMP error at most, so a socket
    /// that keeps failing is not read in a loop until the deadline.
    pending: u32,
    probes_per_hop: u32,
}

impl Probes for Echoes {
    fn start_hop(&mut self) {
        self.pending = 0;
    }

    fn payload(&self, round: &Round, ttl: u8, index: u8) -> Vec<u8> {
        echo(round, self.v4, ttl, index).to_vec()
    }

    async fn answer(&mut self, socket: &UdpSocket, round: &mut Round) -> Result<(), String> {
        let (request, reply) = if self.v4 {
            (ECHO_REQUEST_V4, ECHO_REPLY_V4)
        } else {
            (ECHO_REQUEST_V6, ECHO_REPLY_V6)
        };
        let got = socket
            .async_io(Interest::READABLE | Interest::ERROR, || read(socket))
            .await;
        match got {
            Ok(Got::Error(Queued {
                quoted,
                from: Some(from),
                answer: Some(answer),
                at,
            })) => {
                self.pending = 0;
                match probe_of(&quoted, request) {
                    Some((probe, token)) => {
                        round.on_probe_answer(probe, token, from, for_echo(answer, self.v4), at)
                    }
                    None => round.foreign += 1,
                }
            }
            Ok(Got::Error(_)) => self.pending = 0,
            Ok(Got::Reply { message, from, at }) => {
                self.pending = 0;
                match (probe_of(&message, reply), from) {
                    (Some((Some(probe), token)), Some(from)) if from == self.ip => {
                        round.on_probe_answer(Some(probe), token, from, Answer::Reached, at)
                    }
                    _ => round.foreign += 1,
                }
            }
            Ok(Got::Pending(e)) => {
                self.pending += 1;
                if self.pending > 2 * self.probes_per_hop {
                    return Err(format!("receive: {e}"));
                }
            }
            Err(e) => return Err(format!("error queue: {e}")),
        }
        Ok(())
    }
}

/// Probes the TTLs of `check` on the ping `socket` (connected to `ip`) with echo requests and
/// makes the round's sample, as [`super::round`] does with UDP.
pub async fn round(socket: &UdpSocket, ip: IpAddr, check: &TracerouteCheck) -> Sample {
    let echoes = Echoes {
        ip,
        v4: ip.is_ipv4(),
        pending: 0,
        probes_per_hop: check.probes_per_hop,
    };
    probe_hops(socket, ip, check, echoes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum the kernel computes over an echo (the IPv6 pseudo-header adds the same
    /// to every probe of a round), with the identifier it fills in.
    fn checksum(mut echo: [u8; ECHO], ident: u16) -> u16 {
        echo[4..6].copy_from_slice(&ident.to_be_bytes());
        !ones_sum(&echo)
    }

    #[test]
    fn every_echo_of_every_round_has_the_same_checksum() {
        for v4 in [true, false] {
            let first = checksum(echo(&Round::new(3), v4, 1, 0), 61_234);
            for _ in 0..50 {
                let round = Round::new(3);
                for ttl in [1u8, 2, 17, 128, 255] {
                    for index in 0..10u8 {
                        let e = echo(&round, v4, ttl, index);
                        assert_eq!(checksum(e, 61_234), first, "ttl {ttl} probe {index}");
                        assert_eq!(
                            probe_of(&e, e[0]),
                            Some((Some((ttl, index)), Some(&round.token()[..])))
                        );
                    }
                }
            }
            // Another identifier is another flow.
            assert_ne!(checksum(echo(&Round::new(3), v4, 1, 0), 61_235), first);
        }
    }

    #[test]
    fn replies_and_quotes_name_their_probe() {
        let round = Round::new(2);
        let mut reply = echo(&round, true, 4, 1);
        reply[0] = ECHO_REPLY_V4;
        assert_eq!(
            probe_of(&reply, ECHO_REPLY_V4),
            Some((Some((4, 1)), Some(&round.token()[..])))
        );
        // A reply is not a quoted request, nor the other family's.
        assert_eq!(probe_of(&reply, ECHO_REQUEST_V4), None);
        assert_eq!(probe_of(&reply, ECHO_REPLY_V6), None);
        // Quoted with the header only: the probe, no token; with nothing: neither.
        let request = echo(&round, false, 9, 0);
        assert_eq!(
            probe_of(&request[..8], ECHO_REQUEST_V6),
            Some((Some((9, 0)), None))
        );
        assert_eq!(probe_of(&[], ECHO_REQUEST_V6), Some((None, None)));
        // A "port unreachable" answering an echo ends the round as unreachable, not reached.
        assert_eq!(for_echo(Answer::Reached, true), Answer::Unreachable(3, 3));
        assert_eq!(for_echo(Answer::TimeExceeded, false), Answer::TimeExceeded);
    }

    #[test]
    fn answers_of_another_round_are_foreign() {
        let mut mine = Round::new(1);
        let theirs = Round::new(1);
        let t0 = SystemTime::now();
        mine.start_hop(1);
        mine.sent(0, t0);
        let e = echo(&theirs, true, 1, 0);
        let (probe, token) = probe_of(&e, ECHO_REQUEST_V4).unwrap();
        let a: IpAddr = "10.1.1.1".parse().unwrap();
        mine.on_probe_answer(probe, token, a, Answer::TimeExceeded, t0);
        assert_eq!(mine.foreign, 1);
        assert!(!mine.hop_answered());
        let e = echo(&mine, true, 1, 0);
        let (probe, token) = probe_of(&e, ECHO_REQUEST_V4).unwrap();
        mine.on_probe_answer(
            probe,
            token,
            a,
            Answer::TimeExceeded,
            t0 + Duration::from_millis(3),
        );
        assert!(mine.hop_answered());
        assert_eq!(mine.hops()[0].address.as_deref(), Some("10.1.1.1"));
        assert!((mine.hops()[0].latency_ms.unwrap() - 3.0).abs() < 1e-6);
    }
}
