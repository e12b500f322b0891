//! One UDP socket per address family, shared by every DNS round run under one
//! [`CheckContext`](super::CheckContext), instead of a socket per round (which cost a
//! `socket`, `bind`, two `epoll_ctl` and a `close` per round).
//!
//! A demultiplexer task owns the receiving side of each socket. A round registers its query
//! under (server address, query id) before sending it; the id is drawn at random and skips the
//! ids in flight to the same server, so no two queries in flight share a key. A datagram is
//! handed to the round registered under (its source address, its first two bytes), with the
//! kernel's receive time; the round still checks that it is a response to its question (an answer
//! to an earlier query that reused the id is refused there, as before). A datagram from a
//! server with queries in flight that matches none of them (another id, or too short to carry
//! one) is told to each of those rounds as ignored, as the round's own socket used to count
//! it; one from an address no query went to is dropped and only counted on the socket. A
//! round takes its key out when it ends, however it ends (also when aborted): nothing stays
//! registered.
//!
//! Times: the receive time of a datagram is the kernel's (`SO_TIMESTAMPNS`: when it reached
//! the stack, not when the runtime got to the socket, which may be busy starting other
//! rounds); the round reads its send time right before `sendto`, on the same clock.
//!
//! What changes against a socket per round: the source port is the socket's, the same for
//! every query of the process, so a forger off the path has the id (16 random bits) to guess
//! rather than the id and the port. The probe measures; it caches nothing it is told.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{self as nixsock, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::icmp_socket::now;
use super::socket_slots::{self, PerFamily};

/// Largest datagram read whole (a longer one is cut, and then reads as malformed).
pub const MAX_DATAGRAM: usize = 4096;

/// What the demultiplexer hands a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A datagram from the round's server carrying the round's query id, and when the kernel
    /// received it (`CLOCK_REALTIME`, as [`now`](super::icmp_socket::now) reads it).
    Datagram { bytes: Vec<u8>, at: Duration },
    /// A datagram from the round's server that matches no query in flight.
    Stray,
}

/// (server address, server port, query id). The address and port rather than the
/// `SocketAddr`: an IPv6 source carries a flow label and scope the configured server lacks.
type Key = (IpAddr, u16, u16);

fn key(server: SocketAddr, id: u16) -> Key {
    (server.ip(), server.port(), id)
}

struct Shared {
    fd: UdpSocket,
    pending: Mutex<HashMap<Key, mpsc::UnboundedSender<Event>>>,
    /// Set when the demultiplexer gave up on the socket: the next round opens another.
    broken: AtomicBool,
    /// Datagrams from an address no query in flight went to.
    unsolicited: AtomicU64,
}

/// One shared UDP socket and its demultiplexer; the task stops and the socket closes when
/// the last handle is dropped.
pub struct DnsSocket {
    shared: Arc<Shared>,
    demux: tokio::task::AbortHandle,
}

impl Drop for DnsSocket {
    fn drop(&mut self) {
        self.demux.abort();
    }
}

/// The shared sockets of a [`CheckContext`](super::CheckContext), opened at first use (a
/// process without DNS targets opens none) and again after the socket failed.
#[derive(Default)]
pub struct DnsSockets(PerFamily<DnsSocket>);

impl socket_slots::Shared for DnsSocket {
    fn broken(&self) -> bool {
        self.shared.broken.load(Ordering::Relaxed)
    }
}

impl DnsSockets {
    /// The socket for `server`'s family. Must be called within a tokio runtime.
    pub fn get(&self, server: SocketAddr) -> io::Result<Arc<DnsSocket>> {
        self.0
            .get(server.is_ipv4(), || DnsSocket::open(server.is_ipv4()))
    }

    /// Queries awaiting an answer on either socket (for tests: 0 once no round runs).
    pub fn pending(&self) -> usize {
        self.0.open().map(|s| s.pending()).sum()
    }

    /// Datagrams received from an address no query in flight went to, on either socket.
    pub fn unsolicited(&self) -> u64 {
        self.0.open().map(|s| s.unsolicited()).sum()
    }
}

impl DnsSocket {
    fn open(v4: bool) -> io::Result<Self> {
        let any: SocketAddr = if v4 {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = std::net::UdpSocket::bind(any)?;
        socket.set_nonblocking(true)?;
        nixsock::setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
        let shared = Arc::new(Shared {
            fd: UdpSocket::from_std(socket)?,
            pending: Mutex::new(HashMap::new()),
            broken: AtomicBool::new(false),
            unsolicited: AtomicU64::new(0),
        });
        let demux = tokio::spawn(demultiplex(shared.clone())).abort_handle();
        Ok(Self { shared, demux })
    }

    /// The local address (its port is that of every query of the family).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.fd.local_addr()
    }

    /// Queries awaiting an answer.
    pub fn pending(&self) -> usize {
        self.shared.pending.lock().expect("dns table lock").len()
    }

    /// Datagrams received from an address no query in flight went to.
    pub fn unsolicited(&self) -> u64 {
        self.shared.unsolicited.load(Ordering::Relaxed)
    }

    /// Registers a query to `server` under a fresh id: random, skipping the ids in flight to
    /// that server. Fails only when all 65,536 are in flight.
    pub fn register(self: &Arc<Self>, server: SocketAddr) -> io::Result<Pending> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pending = self.shared.pending.lock().expect("dns table lock");
        let start = fastrand::u16(..);
        let id = (0..=u16::MAX)
            .map(|k| start.wrapping_add(k))
            .find(|id| !pending.contains_key(&key(server, *id)))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "every DNS query id to {server} is awaiting an answer"
                ))
            })?;
        pending.insert(key(server, id), tx);
        Ok(Pending {
            socket: self.clone(),
            server,
            id,
            rx,
        })
    }
}

/// One query's registration on a shared socket: sends it, receives what may answer it, and
/// takes the registration out when dropped.
pub struct Pending {
    socket: Arc<DnsSocket>,
    server: SocketAddr,
    id: u16,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Pending {
    /// The query id to put in the message.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Sends the encoded query to the server.
    pub async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        self.socket
            .shared
            .fd
            .send_to(datagram, self.server)
            .await
            .map(|_| ())
    }

    /// The next datagram for this query; `None` if the registration was lost (it is not,
    /// while `self` lives: the table holds the sender until the drop).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.socket
            .shared
            .pending
            .lock()
            .expect("dns table lock")
            .remove(&key(self.server, self.id));
    }
}

/// Reads every datagram of the socket and hands each to its round.
async fn demultiplex(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = nix::cmsg_space!(nix::libc::timespec);
    loop {
        let drained = shared
            .fd
            .ready(Interest::READABLE)
            .await
            .and_then(|_| drain(&shared, &mut buf, &mut cmsg));
        if let Err(e) = drained {
            tracing::error!(error = %e, "the shared DNS socket failed; the next DNS round opens another");
            shared.broken.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// Hands out everything queued; `Err` when the socket keeps failing.
fn drain(shared: &Shared, buf: &mut [u8], cmsg: &mut Vec<u8>) -> io::Result<()> {
    let fd = shared.fd.as_raw_fd();
    let mut failures = 0;
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        // `try_io` clears tokio's readiness when the queue is empty (EAGAIN).
        let received = shared.fd.try_io(Interest::READABLE, || {
            nixsock::recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut *cmsg),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
            .map(|msg| {
                let mut at = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(ts) = c {
                            at = Some(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32));
                        }
                    }
                }
                (msg.bytes, msg.address.and_then(|a| socket_addr(&a)), at)
            })
        });
        let (n, from, at) = match received {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // An unconnected UDP socket without IP_RECVERR is not told of ICMP errors:
                // what fails here keeps failing.
                failures += 1;
                if failures > 16 {
                    return Err(e);
                }
                continue;
            }
        };
        let Some(from) = from else { continue };
        let at = at.unwrap_or_else(now);
        dispatch(shared, &buf[..n.min(buf.len())], from, at);
    }
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()))
    } else {
        a.as_sockaddr_in6()
            .map(|v6| SocketAddr::new(IpAddr::V6(v6.ip()), v6.port()))
    }
}

fn dispatch(shared: &Shared, datagram: &[u8], from: SocketAddr, at: Duration) {
    let pending = shared.pending.lock().expect("dns table lock");
    if let [a, b, ..] = *datagram
        && let Some(tx) = pending.get(&key(from, u16::from_be_bytes([a, b])))
    {
        // A round that has ended has taken its key out: a send only fails while the round
        // is being dropped.
        let _ = tx.send(Event::Datagram {
            bytes: datagram.to_vec(),
            at,
        });
        return;
    }
    let mut told = false;
    for ((ip, port, _), tx) in pending.iter() {
        if *ip == from.ip() && *port == from.port() {
            told = true;
            let _ = tx.send(Event::Stray);
        }
    }
    if !told {
        shared.unsolicited.fetch_add(1, Ordering::Relaxed);
    }
}
