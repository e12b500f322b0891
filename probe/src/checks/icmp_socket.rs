//! One ICMP datagram socket per address family, shared by every ICMP round run under one
//! [`CheckContext`](super::CheckContext), instead of a socket per round.
//!
//! A demultiplexer task owns the receiving side of each socket. The kernel sets the echo
//! identifier of a ping socket to the socket's own, so with one socket it tells rounds apart
//! by nothing: each echo gets a sequence number from the socket's counter (skipping numbers
//! still in use), and the socket's table maps that number to the round and echo that sent
//! it. A reply is handed to its round when its sequence number is in the table and it comes
//! from the address the echo went to; the round still checks its own token in the payload,
//! so a stray reply reusing a number is refused. A round removes its numbers when it ends,
//! however it ends (also when aborted): nothing stays in the table.
//!
//! Times: the receive time of a reply is the kernel's (`SO_TIMESTAMPNS`: taken when the
//! packet reached the stack, not when the runtime got to the socket), the send time is read
//! right before `sendto`; both are `CLOCK_REALTIME`, as the kernel's timestamps are. ICMP
//! errors answering an echo (destination unreachable, time exceeded; `IP_RECVERR`) are read
//! from the socket's error queue and handed to their round at once, with their text.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{self as nixsock, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::socket_slots::{self, PerFamily};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// The ICMP echo header.
pub const HEADER: usize = 8;
/// How much of a reply's payload is read: the round's token at its head.
pub const HEAD: usize = 8;

/// The wall clock as the kernel's timestamps read it (`CLOCK_REALTIME`), since the epoch.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// What the demultiplexer hands a round about one of its echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An echo reply: `head` holds the first `len` bytes of its payload (at most [`HEAD`]),
    /// `at` is the kernel's receive time.
    Reply {
        echo: usize,
        from: IpAddr,
        head: [u8; HEAD],
        len: usize,
        at: Duration,
    },
    /// An ICMP error answering the echo (or a local error the kernel queued for it).
    Error { echo: usize, text: String },
}

struct Pending {
    ip: IpAddr,
    echo: usize,
    tx: mpsc::UnboundedSender<Event>,
}

struct Table {
    next_seq: u16,
    pending: HashMap<u16, Pending>,
}

struct Shared {
    /// A ping socket handed to tokio as a `UdpSocket`: `sendto`/`recvmsg` are the very
    /// system calls it takes, and its readiness is what the demultiplexer waits on; this
    /// keeps the code free of `unsafe`.
    fd: UdpSocket,
    v4: bool,
    table: Mutex<Table>,
    /// Set when the demultiplexer gave up on the socket: the next round opens another.
    broken: AtomicBool,
}

/// One shared ICMP socket and its demultiplexer; the task stops and the socket closes when
/// the last handle is dropped.
pub struct IcmpSocket {
    shared: Arc<Shared>,
    demux: tokio::task::AbortHandle,
}

impl Drop for IcmpSocket {
    fn drop(&mut self) {
        self.demux.abort();
    }
}

/// The shared sockets of a [`CheckContext`](super::CheckContext), opened at first use (so
/// that a process without ICMP targets opens none) and again after a failure to open (the
/// node's `ping_group_range` may change).
#[derive(Default)]
pub struct IcmpSockets(PerFamily<IcmpSocket>);

impl socket_slots::Shared for IcmpSocket {
    fn broken(&self) -> bool {
        self.shared.broken.load(Ordering::Relaxed)
    }
}

impl IcmpSockets {
    /// The socket for `ip`'s family. Must be called within a tokio runtime.
    pub fn get(&self, ip: IpAddr) -> io::Result<Arc<IcmpSocket>> {
        self.0.get(ip.is_ipv4(), || IcmpSocket::open(ip.is_ipv4()))
    }

    /// How many echoes await a reply on either socket (for tests: 0 once no round runs).
    pub fn pending(&self) -> usize {
        self.0.open().map(|s| s.pending()).sum()
    }
}

/// Opens an unprivileged ICMP datagram socket ("ping socket") of the family.
pub fn open_raw(v4: bool) -> io::Result<Socket> {
    if v4 {
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))
    } else {
        Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::ICMPV6))
    }
}

impl IcmpSocket {
    fn open(v4: bool) -> io::Result<Self> {
        let socket = open_raw(v4)?;
        socket.set_nonblocking(true)?;
        nixsock::setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
        if v4 {
            nixsock::setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
        } else {
            nixsock::setsockopt(&socket, sockopt::Ipv6RecvErr, &true)?;
        }
        let shared = Arc::new(Shared {
            fd: UdpSocket::from_std(socket.into())?,
            v4,
            table: Mutex::new(Table {
                next_seq: fastrand::u16(..),
                pending: HashMap::new(),
            }),
            broken: AtomicBool::new(false),
        });
        let demux = tokio::spawn(demultiplex(shared.clone())).abort_handle();
        Ok(Self { shared, demux })
    }

    /// Echoes awaiting a reply.
    pub fn pending(&self) -> usize {
        self.shared
            .table
            .lock()
            .expect("icmp table lock")
            .pending
            .len()
    }

    /// Starts a round's use of the socket, its echoes going to `ip`.
    pub fn round(self: &Arc<Self>, ip: IpAddr) -> RoundSocket {
        let (tx, rx) = mpsc::unbounded_channel();
        RoundSocket {
            socket: self.clone(),
            ip,
            target: SocketAddr::new(ip, 0),
            tx,
            rx,
            seqs: Vec::new(),
            packet: Vec::new(),
        }
    }
}

/// A round's view of a shared socket: sends its echoes, receives what answers them, and
/// takes its sequence numbers out of the table when dropped.
pub struct RoundSocket {
    socket: Arc<IcmpSocket>,
    ip: IpAddr,
    target: SocketAddr,
    /// Kept so that `next` waits rather than ending while no echo is registered.
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    seqs: Vec<u16>,
    packet: Vec<u8>,
}

impl RoundSocket {
    /// Sends echo number `echo` of the round with `payload`; returns the send time.
    pub async fn send(&mut self, echo: usize, payload: &[u8]) -> io::Result<Duration> {
        let shared = &self.socket.shared;
        let seq = {
            let mut table = shared.table.lock().expect("icmp table lock");
            let mut seq = None;
            for _ in 0..=u16::MAX as u32 {
                let s = table.next_seq;
                table.next_seq = s.wrapping_add(1);
                if !table.pending.contains_key(&s) {
                    seq = Some(s);
                    break;
                }
            }
            let seq = seq.ok_or_else(|| {
                io::Error::other("every ICMP sequence number is awaiting a reply")
            })?;
            table.pending.insert(
                seq,
                Pending {
                    ip: self.ip,
                    echo,
                    tx: self.tx.clone(),
                },
            );
            seq
        };
        self.seqs.push(seq);
        self.packet.clear();
        self.packet.push(if shared.v4 {
            ECHO_REQUEST_V4
        } else {
            ECHO_REQUEST_V6
        });
        // Code, checksum and identifier: the kernel fills the checksum and the identifier.
        self.packet.extend_from_slice(&[0, 0, 0, 0, 0]);
        self.packet.extend_from_slice(&seq.to_be_bytes());
        self.packet.extend_from_slice(payload);
        let mut stale = 0;
        loop {
            let at = now();
            match shared.fd.try_send_to(&self.packet, self.target) {
                Ok(_) => return Ok(at),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: wait for room, then read the time again.
                    shared.fd.writable().await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // With IP_RECVERR the kernel also leaves each ICMP error on the socket itself,
                // and the next send fails with it (consuming it) whichever round sends: that
                // error belongs to an echo already told about through the error queue, so the
                // send is tried again. An error that stays is this send's own.
                Err(_) if stale < 3 => stale += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next reply or error for one of the round's echoes.
    pub async fn next(&mut self) -> Event {
        self.rx
            .recv()
            .await
            .expect("the round holds a sender itself")
    }
}

impl Drop for RoundSocket {
    fn drop(&mut self) {
        let mut table = self.socket.shared.table.lock().expect("icmp table lock");
        for seq in &self.seqs {
            // The number may have been reused by now only if it was freed, which is here.
            table.pending.remove(seq);
        }
    }
}

/// Reads every reply and queued error of the socket and hands each to its round.
async fn demultiplex(shared: Arc<Shared>) {
    let mut buf = [0u8; HEADER + HEAD];
    let mut cmsg = nix::cmsg_space!(
        nix::libc::timespec,
        nix::libc::sock_extended_err,
        nix::libc::sockaddr_in6
    );
    loop {
        let ready = shared.fd.ready(Interest::READABLE | Interest::ERROR).await;
        // The error queue first: reading it also clears the error the kernel set on the
        // socket for the same ICMP error.
        let drained = ready.and_then(|ready| {
            if ready.is_error() {
                drain(&shared, &mut buf, &mut cmsg, true)?;
            }
            if ready.is_readable() {
                drain(&shared, &mut buf, &mut cmsg, false)?;
            }
            Ok(())
        });
        if let Err(e) = drained {
            tracing::error!(error = %e, "the shared ICMP socket failed; the next ICMP round opens another");
            shared.broken.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// Hands out everything queued; `Err` when the socket keeps failing.
fn drain(shared: &Shared, buf: &mut [u8], cmsg: &mut [u8], errqueue: bool) -> io::Result<()> {
    let fd = shared.fd.as_raw_fd();
    let (flags, interest) = if errqueue {
        (
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_ERRQUEUE,
            Interest::ERROR,
        )
    } else {
        (MsgFlags::MSG_DONTWAIT, Interest::READABLE)
    };
    let mut other_errors = 0;
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        // `try_io` clears tokio's readiness when the queue is empty (EAGAIN).
        let received = shared.fd.try_io(interest, || {
            nixsock::recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut *cmsg), flags)
                .map_err(io::Error::from)
                .map(|msg| {
                    let from = msg.address.and_then(|a| ip_of(&a));
                    let mut at = None;
                    let mut error = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            read_cmsg(c, &mut at, &mut error);
                        }
                    }
                    (msg.bytes, from, at, error)
                })
        });
        let (bytes, from, at, error) = match received {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // An error the kernel also set on the socket for an ICMP error it queued
                // (reported once by a plain receive); the queued copy says which echo.
                other_errors += 1;
                if other_errors > 16 {
                    return Err(e);
                }
                continue;
            }
        };
        let n = bytes.min(buf.len());
        if n < HEADER {
            continue;
        }
        let packet = &buf[..n];
        let seq = u16::from_be_bytes([packet[6], packet[7]]);
        let (reply, request) = if shared.v4 {
            (ECHO_REPLY_V4, ECHO_REQUEST_V4)
        } else {
            (ECHO_REPLY_V6, ECHO_REQUEST_V6)
        };
        let Some(from) = from else { continue };
        let table = shared.table.lock().expect("icmp table lock");
        let Some(p) = table.pending.get(&seq) else {
            continue;
        };
        let event = if errqueue {
            // The error carries the echo it answers (its ICMP header) and, as the address,
            // where that echo went.
            let Some(text) = error else { continue };
            if packet[0] != request || from != p.ip {
                continue;
            }
            Event::Error { echo: p.echo, text }
        } else {
            if packet[0] != reply {
                continue;
            }
            let mut head = [0u8; HEAD];
            let len = n - HEADER;
            head[..len].copy_from_slice(&packet[HEADER..]);
            Event::Reply {
                echo: p.echo,
                from,
                head,
                len,
                at: at.unwrap_or_else(now),
            }
        };
        // A round that has ended has taken its numbers out; a send can only fail while the
        // round is being dropped.
        let _ = p.tx.send(event);
    }
}

fn read_cmsg(c: ControlMessageOwned, at: &mut Option<Duration>, error: &mut Option<String>) {
    match c {
        ControlMessageOwned::ScmTimestampns(ts) => {
            *at = Some(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32));
        }
        ControlMessageOwned::Ipv4RecvErr(e, offender) => {
            let by = offender
                .map(|a| IpAddr::from(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
            *error = Some(describe(true, &e, by));
        }
        ControlMessageOwned::Ipv6RecvErr(e, offender) => {
            let by = offender.map(|a| IpAddr::from(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr)));
            *error = Some(describe(false, &e, by));
        }
        _ => {}
    }
}

fn ip_of(a: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

/// The text of a queued error, as ping would say it.
fn describe(v4: bool, e: &nix::libc::sock_extended_err, by: Option<IpAddr>) -> String {
    let from = by.map(|a| format!(" from {a}")).unwrap_or_default();
    match e.ee_origin {
        nix::libc::SO_EE_ORIGIN_ICMP | nix::libc::SO_EE_ORIGIN_ICMP6 => {
            let what = icmp_text(v4, e.ee_type, e.ee_code);
            format!("{what} (ICMP type {} code {}{from})", e.ee_type, e.ee_code)
        }
        _ => format!("{}{from}", Errno::from_raw(e.ee_errno as i32).desc()),
    }
}

fn icmp_text(v4: bool, kind: u8, code: u8) -> &'static str {
    if v4 {
        match (kind, code) {
            (3, 0) => "destination network unreachable",
            (3, 1) => "destination host unreachable",
            (3, 2) => "destination protocol unreachable",
            (3, 3) => "destination port unreachable",
            (3, 4) => "fragmentation needed",
            (3, 6 | 7) => "destination unknown",
            (3, 9 | 10 | 13) => "communication administratively prohibited",
            (3, _) => "destination unreachable",
            (11, _) => "time to live exceeded",
            (12, _) => "parameter problem",
            _ => "ICMP error",
        }
    } else {
        match (kind, code) {
            (1, 0) => "no route to destination",
            (1, 1) => "communication administratively prohibited",
            (1, 3) => "destination address unreachable",
            (1, 4) => "destination port unreachable",
            (1, 5 | 6) => "source address failed policy",
            (1, _) => "destination unreachable",
            (2, _) => "packet too big",
            (3, _) => "hop limit exceeded",
            (4, _) => "parameter problem",
            _ => "ICMPv6 error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_errors_read_as_ping_says_them() {
        let mut e: nix::libc::sock_extended_err = zeroed_err();
        e.ee_origin = nix::libc::SO_EE_ORIGIN_ICMP;
        e.ee_type = 3;
        e.ee_code = 1;
        let by: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            describe(true, &e, Some(by)),
            "destination host unreachable (ICMP type 3 code 1 from 192.0.2.1)"
        );
        e.ee_origin = nix::libc::SO_EE_ORIGIN_ICMP6;
        e.ee_type = 1;
        e.ee_code = 4;
        assert!(describe(false, &e, None).starts_with("destination port unreachable"));
        e.ee_origin = nix::libc::SO_EE_ORIGIN_LOCAL;
        e.ee_errno = nix::libc::EMSGSIZE as u32;
        assert_eq!(describe(true, &e, None), Errno::EMSGSIZE.desc());
    }

    fn zeroed_err() -> nix::libc::sock_extended_err {
        nix::libc::sock_extended_err {
            ee_errno: 0,
            ee_origin: 0,
            ee_type: 0,
            ee_code: 0,
            ee_pad: 0,
            ee_info: 0,
            ee_data: 0,
        }
    }
}
