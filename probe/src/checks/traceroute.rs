//! Traceroute over an ordinary UDP socket, as `tracepath` does it: datagrams of increasing TTL
//! (IPv6: hop limit) to a port nothing listens on; with `IP_RECVERR` / `IPV6_RECVERR` the
//! kernel queues the ICMP "time exceeded" of each router on the way, and the host's "port
//! unreachable", on the socket's error queue, with the address that sent it. No raw socket,
//! no NET_RAW capability.
//!
//! Every probe of a round leaves on one connected socket, so source and destination address
//! and port (the flow a load balancer hashes) are the same for all of them, and the UDP
//! checksum is kept the same too (Paris traceroute): a network that balances by flow sends
//! every probe of the round along one path. The source port is the same every round (see
//! [`TracerouteCheck::source_port_for`]), so rounds keep to one path as well and a balanced
//! network does not look like a changing one.
//!
//! The TTLs are probed one after the other, the probes of one TTL together. A probe is known
//! by the TTL and index at the head of its payload, which routers quote back; a router that
//! quotes no payload (RFC 792 asks only for 8 bytes past the IP header, the UDP header) is
//! still placed right, as only one TTL is in flight at a time.
//!
//! With `protocol: icmp` the probes are ICMP echo requests instead ([`icmp`]); the rounds'
//! bookkeeping ([`Round`]) and their samples are the same.

use std::collections::HashMap;
use std::io;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use fiberstack_model::{
    CheckKind, Hop, Sample, TracerouteCheck, TracerouteProtocol, path_fingerprint,
};
use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use serde_json::json;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{down, millis, resolve};

// ICMP mode (`protocol: icmp`): its own file, a part of this module.
#[path = "traceroute_icmp.rs"]
pub mod icmp;

/// Bytes of a probe's payload: TTL, index, the checksum balance (2 bytes) and the round's
/// token (8 bytes).
const PAYLOAD: usize = 12;

/// `ee_origin` of an ICMP (v4) and an ICMPv6 error (linux/errqueue.h).
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_UNREACHABLE: u8 = 3;
const ICMP_PORT_UNREACHABLE: u8 = 3;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_UNREACHABLE: u8 = 1;
const ICMP6_PORT_UNREACHABLE: u8 = 4;

/// What an ICMP error said about a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A router on the way: the TTL ran out there.
    TimeExceeded,
    /// The host: nothing listens on the port (or the host itself refused otherwise).
    Reached,
    /// A router refused to forward: (type, code) of the ICMP unreachable.
    Unreachable(u8, u8),
}

impl Answer {
    /// Classifies an ICMP error by `ee_origin`, type and code; `None` for what is not an
    /// answer to a probe (a local error such as a too-large datagram).
    pub fn classify(origin: u8, kind: u8, code: u8) -> Option<Answer> {
        match (origin, kind, code) {
            (ORIGIN_ICMP, ICMP_TIME_EXCEEDED, _) | (ORIGIN_ICMP6, ICMP6_TIME_EXCEEDED, _) => {
                Some(Answer::TimeExceeded)
            }
            (ORIGIN_ICMP, ICMP_UNREACHABLE, ICMP_PORT_UNREACHABLE)
            | (ORIGIN_ICMP6, ICMP6_UNREACHABLE, ICMP6_PORT_UNREACHABLE) => Some(Answer::Reached),
            (ORIGIN_ICMP, ICMP_UNREACHABLE, c) | (ORIGIN_ICMP6, ICMP6_UNREACHABLE, c) => {
                Some(Answer::Unreachable(kind, c))
            }
            _ => None,
        }
    }
}

/// Words for an ICMP unreachable a router sent.
fn unreachable_text(v4: bool, code: u8) -> String {
    let what = match (v4, code) {
        (true, 0) | (false, 0) => "network unreachable",
        (true, 1) | (false, 3) => "host unreachable",
        (true, 2) => "protocol unreachable",
        (true, 9 | 10 | 13) | (false, 1) => "administratively prohibited",
        (false, 5) => "source address failed policy",
        (false, 6) => "reject route",
        _ => "unreachable",
    };
    format!("{what} (code {code})")
}

/// The bookkeeping of one round, apart from the socket so that it can be tested alone.
#[derive(Debug)]
pub struct Round {
    token: [u8; 8],
    probes_per_hop: u32,
    hops: Vec<HopProbes>,
    /// Answers to a TTL already finished, or not carrying this round's token.
    pub late: u32,
    pub foreign: u32,
}

#[derive(Debug)]
struct HopProbes {
    ttl: u8,
    sent_at: Vec<Option<SystemTime>>,
    answers: Vec<Option<(IpAddr, Duration, Answer)>>,
}

impl Round {
    pub fn new(probes_per_hop: u32) -> Self {
        Self {
            token: fastrand::u64(..).to_be_bytes(),
            probes_per_hop,
            hops: Vec::new(),
            late: 0,
            foreign: 0,
        }
    }

    /// The round's token, which every probe carries.
    pub fn token(&self) -> [u8; 8] {
        self.token
    }

    /// The payload of probe `index` of `ttl`. The second word balances the first, so the
    /// payload's one's-complement sum — and with it the UDP checksum — is the same for every
    /// probe: load balancers that hash the checksum too see one flow.
    pub fn payload(&self, ttl: u8, index: u8) -> [u8; PAYLOAD] {
        let word = u16::from_be_bytes([ttl, index]);
        let mut p = [0u8; PAYLOAD];
        p[..2].copy_from_slice(&word.to_be_bytes());
        p[2..4].copy_from_slice(&(!word).to_be_bytes());
        p[4..].copy_from_slice(&self.token);
        p
    }

    /// Starts the hop of `ttl`; its probes are sent next.
    pub fn start_hop(&mut self, ttl: u8) {
        let n = self.probes_per_hop as usize;
        self.hops.push(HopProbes {
            ttl,
            sent_at: vec![None; n],
            answers: vec![None; n],
        });
    }

    /// Forgets the hop in flight when none of its probes could be sent: it measured nothing.
    pub fn abandon_hop_if_unsent(&mut self) -> bool {
        let unsent = self
            .hops
            .last()
            .is_some_and(|h| h.sent_at.iter().all(Option::is_none));
        if unsent {
            self.hops.pop();
        }
        unsent
    }

    pub fn sent(&mut self, index: usize, at: SystemTime) {
        if let Some(hop) = self.hops.last_mut() {
            hop.sent_at[index] = Some(at);
        }
    }

    /// Records an answer from `from`, quoting `quoted` of the probe's payload, received at
    /// `at`. Only the hop in flight takes answers; a probe quoted without its payload is
    /// taken as the hop's oldest unanswered one.
    pub fn on_answer(&mut self, quoted: &[u8], from: IpAddr, answer: Answer, at: SystemTime) {
        let probe = (quoted.len() >= 2).then(|| (quoted[0], quoted[1]));
        let token = quoted.get(4..PAYLOAD);
        self.on_probe_answer(probe, token, from, answer, at);
    }

    /// Records an answer to the probe `(ttl, index)` carrying `token` (each as far as it was
    /// quoted), from `from`, received at `at`. Only the hop in flight takes answers; a probe
    /// not known is taken as the hop's oldest unanswered one.
    pub fn on_probe_answer(
        &mut self,
        probe: Option<(u8, u8)>,
        token: Option<&[u8]>,
        from: IpAddr,
        answer: Answer,
        at: SystemTime,
    ) {
        if token.is_some_and(|t| t != self.token) {
            self.foreign += 1;
            return;
        }
        let Some(hop) = self.hops.last_mut() else {
            self.foreign += 1;
            return;
        };
        let index = if let Some((ttl, index)) = probe {
            if ttl != hop.ttl {
                self.late += 1;
                return;
            }
            Some(index as usize)
        } else {
            (0..hop.answers.len()).find(|i| hop.sent_at[*i].is_some() && hop.answers[*i].is_none())
        };
        let Some(index) = index.filter(|i| *i < hop.answers.len()) else {
            self.foreign += 1;
            return;
        };
        let (Some(sent_at), None) = (hop.sent_at[index], hop.answers[index]) else {
            // Not sent (a forged index) or answered already (a duplicate).
            self.foreign += 1;
            return;
        };
        let rtt = at.duration_since(sent_at).unwrap_or_default();
        hop.answers[index] = Some((from, rtt, answer));
    }

    /// Whether every probe of the hop in flight was answered.
    pub fn hop_answered(&self) -> bool {
        self.hops
            .last()
            .is_some_and(|h| h.answers.iter().all(Option::is_some))
    }

    /// How the hop in flight ended the round, if it did: the host answered, or a router
    /// refused to forward.
    pub fn hop_end(&self) -> Option<(IpAddr, Answer)> {
        let hop = self.hops.last()?;
        let answers = || hop.answers.iter().flatten();
        answers()
            .find(|(_, _, a)| *a == Answer::Reached)
            .or_else(|| answers().find(|(_, _, a)| matches!(a, Answer::Unreachable(..))))
            .map(|(from, _, a)| (*from, *a))
    }

    /// The hops of the round: per TTL the address that answered most of its probes, the
    /// RTTs of that address's answers, and the share of probes unanswered.
    pub fn hops(&self) -> Vec<Hop> {
        self.hops
            .iter()
            .map(|h| {
                let sent = h.sent_at.iter().flatten().count() as u32;
                let mut by_address: HashMap<IpAddr, Vec<f64>> = HashMap::new();
                for (from, rtt, _) in h.answers.iter().flatten() {
                    by_address.entry(*from).or_default().push(millis(*rtt));
                }
                let received = h.answers.iter().flatten().count() as u32;
                // Most answers first, then the lowest address: the same choice every time.
                let best = by_address
                    .into_iter()
                    .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(&a.0)));
                let rtts = best.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
                Hop {
                    ttl: h.ttl,
                    address: best.map(|(a, _)| a.to_string()),
                    sent,
                    received,
                    packet_loss: if sent == 0 {
                        100.0
                    } else {
                        f64::from(sent - received) * 100.0 / f64::from(sent)
                    },
                    latency_ms: (!rtts.is_empty())
                        .then(|| rtts.iter().sum::<f64>() / rtts.len() as f64),
                    latency_min_ms: rtts.iter().copied().reduce(f64::min),
                    latency_max_ms: rtts.iter().copied().reduce(f64::max),
                }
            })
            .collect()
    }
}

/// Opens the round's socket: UDP from `source_port` (any port when that one is taken),
/// connected to `target`, with ICMP errors queued and received packets time-stamped by the
/// kernel. Returns the socket and the source port it got.
pub fn open_socket(target: SocketAddr, source_port: u16) -> io::Result<(UdpSocket, u16)> {
    let open = |port: u16| -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(target),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        socket.bind(&local.into())?;
        Ok(socket)
    };
    let socket = match open(source_port) {
        Ok(s) => s,
        // Another socket holds the port (another round of this target still running, or an
        // unrelated program): this round takes any port; its path may then differ on a
        // network that balances by flow.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => open(0)?,
        Err(e) => return Err(e),
    };
    socket.connect(&target.into())?;
    if target.is_ipv4() {
        setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv6RecvErr, &true)?;
    }
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
    socket.set_nonblocking(true)?;
    let port = socket
        .local_addr()?
        .as_socket()
        .map_or(source_port, |a| a.port());
    Ok((UdpSocket::from_std(socket.into())?, port))
}

/// One message of the error queue.
struct Queued {
    quoted: Vec<u8>,
    from: Option<IpAddr>,
    answer: Option<Answer>,
    at: SystemTime,
}

/// Takes one message off the socket's error queue, without waiting.
fn read_error_queue(socket: &UdpSocket) -> io::Result<Queued> {
    let mut data = [0u8; 64];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6, libc::timespec);
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut queued = Queued {
        quoted: Vec::new(),
        from: None,
        answer: None,
        at: SystemTime::now(),
    };
    let len = msg.bytes;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        match cmsg {
            ControlMessageOwned::Ipv4RecvErr(e, from) => {
                queued.answer = Answer::classify(e.ee_origin, e.ee_type, e.ee_code);
                queued.from =
                    from.map(|a| IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
            }
            ControlMessageOwned::Ipv6RecvErr(e, from) => {
                queued.answer = Answer::classify(e.ee_origin, e.ee_type, e.ee_code);
                queued.from = from.map(|a| IpAddr::from(a.sin6_addr.s6_addr));
            }
            ControlMessageOwned::ScmTimestampns(ts) => {
                queued.at = SystemTime::UNIX_EPOCH
                    + Duration::new(ts.tv_sec().max(0) as u64, ts.tv_nsec().max(0) as u32);
            }
            _ => {}
        }
    }
    queued.quoted = data[..len.min(data.len())].to_vec();
    Ok(queued)
}

/// Sends one probe. An error an earlier ICMP answer left pending on the socket is reported by
/// the next send and consumed by it; the probe is then sent again.
async fn send_probe(socket: &UdpSocket, payload: &[u8]) -> io::Result<SystemTime> {
    let mut attempts = 0;
    loop {
        let at = SystemTime::now();
        match socket.send(payload).await {
            Ok(_) => return Ok(at),
            Err(e)
                if attempts < 2
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::HostUnreachable
                            | io::ErrorKind::NetworkUnreachable
                    ) =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets the TTL (IPv6: unicast hop limit) of the probes sent next.
fn set_ttl(socket: &UdpSocket, v4: bool, ttl: u8) -> io::Result<()> {
    let s = SockRef::from(socket);
    if v4 {
        s.set_ttl_v4(u32::from(ttl))
    } else {
        s.set_unicast_hops_v6(u32::from(ttl))
    }
}

/// One round against `check.host` for the target named `target`.
pub async fn run(check: &TracerouteCheck, target: &str, timeout: Duration) -> Sample {
    let (addr, dns) = match resolve(&check.host, check.port, timeout).await {
        Ok(a) => a,
        Err(e) => return down(CheckKind::Traceroute, check.host.clone(), e),
    };
    let ip = addr.ip();
    let mut sample = match check.protocol {
        TracerouteProtocol::Udp => {
            let (socket, source_port) = match open_socket(addr, check.source_port_for(target)) {
                Ok(s) => s,
                Err(e) => {
                    return down(
                        CheckKind::Traceroute,
                        ip.to_string(),
                        format!("cannot open a UDP socket towards {addr}: {e}"),
                    );
                }
            };
            let mut sample = round(&socket, ip, check).await;
            sample
                .metadata
                .insert("source_port".into(), json!(source_port));
            sample
        }
        TracerouteProtocol::Icmp => icmp::run(ip, check, check.source_port_for(target)).await,
    };
    if let Some(d) = dns {
        sample.metadata.insert("dns_ms".into(), json!(millis(d)));
    }
    sample
}

/// What a UDP and an ICMP round do differently: the bytes of each probe, and how an answer
/// arrives. [`probe_hops`] does the rest, the same for both.
trait Probes {
    /// A hop's probes are about to leave.
    fn start_hop(&mut self) {}

    /// The bytes of probe `index` of `ttl`.
    fn payload(&self, round: &Round, ttl: u8, index: u8) -> Vec<u8>;

    /// Waits for what the socket reports next and records any answer in `round`, in the
    /// poll that reads it (the wait is cancelled at the hop's deadline). `Err`: the hop ends,
    /// with that trouble.
    async fn answer(&mut self, socket: &UdpSocket, round: &mut Round) -> Result<(), String>;
}

/// UDP probes: the answers are ICMP errors, all on the socket's error queue.
struct Datagrams;

impl Probes for Datagrams {
    fn payload(&self, round: &Round, ttl: u8, index: u8) -> Vec<u8> {
        round.payload(ttl, index).to_vec()
    }

    async fn answer(&mut self, socket: &UdpSocket, round: &mut Round) -> Result<(), String> {
        match socket
            .async_io(Interest::ERROR, || read_error_queue(socket))
            .await
        {
            Ok(Queued {
                quoted,
                from: Some(from),
                answer: Some(answer),
                at,
            }) => round.on_answer(&quoted, from, answer, at),
            Ok(_) => {}
            Err(e) => return Err(format!("error queue: {e}")),
        }
        Ok(())
    }
}

/// Probes the TTLs of `check` on `socket` (connected to `ip`) with UDP datagrams and makes
/// the round's sample.
pub async fn round(socket: &UdpSocket, ip: IpAddr, check: &TracerouteCheck) -> Sample {
    probe_hops(socket, ip, check, Datagrams).await
}

/// The TTLs of `check` one after the other, each with its probes sent together and answered
/// until all are or the hop's timeout passes, until the host answers, a router refuses to
/// forward, or `max_hops`; then the round's sample.
async fn probe_hops(
    socket: &UdpSocket,
    ip: IpAddr,
    check: &TracerouteCheck,
    mut probes: impl Probes,
) -> Sample {
    let v4 = ip.is_ipv4();
    let first = check.first_hop.clamp(1, 255) as u8;
    let last = check.max_hops.clamp(u32::from(first), 255) as u8;
    let hop_timeout = check.hop_timeout.as_std();
    let mut round = Round::new(check.probes_per_hop);
    let mut end = None;
    let mut trouble = None;
    for ttl in first..=last {
        if let Err(e) = set_ttl(socket, v4, ttl) {
            trouble = Some(format!("cannot set TTL {ttl}: {e}"));
            break;
        }
        round.start_hop(ttl);
        probes.start_hop();
        for index in 0..check.probes_per_hop as u8 {
            match send_probe(socket, &probes.payload(&round, ttl, index)).await {
                Ok(at) => round.sent(index as usize, at),
                Err(e) => {
                    trouble.get_or_insert_with(|| format!("send with TTL {ttl}: {e}"));
                }
            }
        }
        if round.abandon_hop_if_unsent() {
            break;
        }
        let deadline = tokio::time::Instant::now() + hop_timeout;
        while !round.hop_answered() {
            let answered = tokio::select! {
                a = probes.answer(socket, &mut round) => a,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            if let Err(t) = answered {
                trouble.get_or_insert(t);
                break;
            }
        }
        end = round.hop_end();
        if end.is_some() {
            break;
        }
    }
    sample(&round, ip, end, last, trouble)
}

/// The round's sample: its hops and fingerprint; up when the host answered, with the figures
/// of the last hop (the host's) as the sample's latency and loss.
fn sample(
    round: &Round,
    ip: IpAddr,
    end: Option<(IpAddr, Answer)>,
    last: u8,
    trouble: Option<String>,
) -> Sample {
    let hops = round.hops();
    let mut s = down(CheckKind::Traceroute, ip.to_string(), String::new());
    s.error = None;
    match end {
        Some((_, Answer::Reached)) => {
            let host = hops.last().expect("the host answered a hop");
            s.up = true;
            s.latency_ms = host.latency_ms;
            s.latency_min_ms = host.latency_min_ms;
            s.latency_max_ms = host.latency_max_ms;
            s.sent = Some(host.sent);
            s.received = Some(host.received);
            s.packet_loss = Some(host.packet_loss);
        }
        Some((from, Answer::Unreachable(_, code))) => {
            let ttl = hops.last().map_or(0, |h| h.ttl);
            s.error = Some(format!(
                "hop {ttl} ({from}) answered {}",
                unreachable_text(ip.is_ipv4(), code)
            ));
        }
        _ => {
            s.error = Some(match trouble {
                Some(t) => super::truncate(format!("{ip} not reached: {t}")),
                None => format!("{ip} not reached within {last} hops"),
            });
        }
    }
    for (key, n) in [("late", round.late), ("foreign", round.foreign)] {
        if n > 0 {
            s.metadata.insert(key.into(), json!(n));
        }
    }
    if !hops.is_empty() {
        s.path_fingerprint = Some(path_fingerprint(&hops));
    }
    s.hops = hops;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 1, 1));
    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9));

    fn at(t0: SystemTime, ms: u64) -> SystemTime {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn every_probe_of_a_round_has_the_same_checksum_sum() {
        let r = Round::new(3);
        let sum = |p: &[u8]| {
            p.chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum::<u32>()
        };
        let fold = |mut s: u32| {
            while s > 0xFFFF {
                s = (s & 0xFFFF) + (s >> 16);
            }
            s
        };
        let first = fold(sum(&r.payload(1, 0)));
        for ttl in 1..=255u8 {
            for i in 0..10u8 {
                assert_eq!(fold(sum(&r.payload(ttl, i))), first, "ttl {ttl} probe {i}");
            }
        }
    }

    #[test]
    fn answers_are_matched_to_their_hop_and_probe() {
        let mut r = Round::new(3);
        let t0 = SystemTime::now();
        r.start_hop(1);
        for i in 0..3 {
            r.sent(i, at(t0, i as u64));
        }
        // Probe 2 answered first, probe 0 quoted without payload, a stranger's token.
        r.on_answer(&r.payload(1, 2), A, Answer::TimeExceeded, at(t0, 12));
        r.on_answer(&[], A, Answer::TimeExceeded, at(t0, 10));
        let mut stranger = r.payload(1, 1);
        stranger[11] ^= 1;
        r.on_answer(&stranger, A, Answer::TimeExceeded, at(t0, 11));
        assert_eq!(r.foreign, 1);
        assert!(!r.hop_answered());
        assert_eq!(r.hop_end(), None);
        r.start_hop(2);
        r.sent(0, at(t0, 100));
        // A late answer to hop 1 does not count for hop 2.
        let p = r.payload(1, 1);
        r.on_answer(&p, A, Answer::TimeExceeded, at(t0, 101));
        assert_eq!(r.late, 1);
        let p = r.payload(2, 0);
        r.on_answer(&p, HOST, Answer::Reached, at(t0, 120));
        // A duplicate is not a second answer.
        r.on_answer(&p, HOST, Answer::Reached, at(t0, 121));
        assert_eq!(r.foreign, 2);
        assert_eq!(r.hop_end(), Some((HOST, Answer::Reached)));

        let hops = r.hops();
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].address.as_deref(), Some("10.1.1.1"));
        assert_eq!((hops[0].sent, hops[0].received), (3, 2));
        assert!((hops[0].packet_loss - 100.0 / 3.0).abs() < 1e-9);
        assert!((hops[0].latency_min_ms.unwrap() - 10.0).abs() < 1e-6);
        assert!((hops[0].latency_max_ms.unwrap() - 10.0).abs() < 1e-6);
        // Probes 2 was sent at 2 ms and answered at 12 ms.
        assert!((hops[0].latency_ms.unwrap() - 10.0).abs() < 1e-6);
        assert_eq!(hops[1].sent, 1);
        assert_eq!(hops[1].address.as_deref(), Some("10.9.9.9"));
        assert!((hops[1].latency_ms.unwrap() - 20.0).abs() < 1e-6);

        let mut s = sample(&r, HOST, r.hop_end(), 30, None);
        s.target = "path".into();
        s.validate(chrono::Utc::now()).unwrap();
        assert!(s.up);
        assert_eq!(s.latency_ms, hops[1].latency_ms);
        assert_eq!(s.path_fingerprint, Some(path_fingerprint(&hops)));
    }

    #[test]
    fn a_silent_hop_is_a_star_and_an_unreached_host_is_down_with_its_hops() {
        let mut r = Round::new(2);
        let t0 = SystemTime::now();
        r.start_hop(1);
        r.sent(0, t0);
        r.sent(1, t0);
        r.start_hop(2);
        r.sent(0, t0);
        r.sent(1, t0);
        let mut s = sample(&r, HOST, None, 2, None);
        s.target = "path".into();
        s.validate(chrono::Utc::now()).unwrap();
        assert!(!s.up);
        assert_eq!(
            s.error.as_deref(),
            Some("10.9.9.9 not reached within 2 hops")
        );
        assert!(
            s.hops
                .iter()
                .all(|h| h.address.is_none() && h.packet_loss == 100.0)
        );
        assert!(s.path_fingerprint.is_some());
    }

    #[test]
    fn a_hop_whose_probes_all_failed_to_leave_is_not_a_hop() {
        let mut r = Round::new(2);
        r.start_hop(1);
        r.sent(0, SystemTime::now());
        assert!(!r.abandon_hop_if_unsent());
        r.start_hop(2);
        assert!(r.abandon_hop_if_unsent());
        assert_eq!(r.hops().len(), 1);
        let mut s = sample(
            &r,
            HOST,
            None,
            2,
            Some("send with TTL 2: no buffer space".into()),
        );
        s.target = "path".into();
        s.validate(chrono::Utc::now()).unwrap();
        assert_eq!(
            s.error.as_deref(),
            Some("10.9.9.9 not reached: send with TTL 2: no buffer space")
        );
    }

    #[test]
    fn icmp_errors_are_told_apart() {
        assert_eq!(Answer::classify(2, 11, 0), Some(Answer::TimeExceeded));
        assert_eq!(Answer::classify(3, 3, 0), Some(Answer::TimeExceeded));
        assert_eq!(Answer::classify(2, 3, 3), Some(Answer::Reached));
        assert_eq!(Answer::classify(3, 1, 4), Some(Answer::Reached));
        assert_eq!(Answer::classify(2, 3, 13), Some(Answer::Unreachable(3, 13)));
        assert_eq!(Answer::classify(1, 0, 0), None);
        assert_eq!(
            unreachable_text(true, 13),
            "administratively prohibited (code 13)"
        );
    }
}
