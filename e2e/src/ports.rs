//! Ports for the servers a test starts or points at, held for the whole test.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};

/// A TCP port held for the length of a test: bound but not listening, so a connection to it
/// is refused, and a bind to port 0 anywhere on the machine (another test's server, in this
/// process or another) is never handed it — until the reservation is dropped.
///
/// A port bound and at once released ("free") is not enough: the kernel picks port-0 binds
/// at random among the free ports, so now and then a concurrent test's server got it. In CI
/// the probe's wrong-token test's receiver landed on the SIGTERM test's "dead" ingest port:
/// the SIGTERM test's flush delivered everything there and the wrong-token test counted a
/// third request.
///
/// The held socket is bound to 0.0.0.0 with SO_REUSEADDR:
/// - a process told to use the port binds and listens on it while the test holds it, on
///   127.0.0.1 or on 0.0.0.0, as long as it sets SO_REUSEADDR too — tokio's and std's
///   `TcpListener::bind` do on Unix, and so does PostgreSQL; connections then reach it;
/// - on the wildcard address it conflicts with a port-0 bind on every address. Held on
///   127.0.0.1 only, a port-0 bind on another address (127.0.0.2, a pod network's host
///   address) could still be handed the port, and a process listening on 0.0.0.0 would
///   then fail to bind.
///
/// Connect to it (and tell processes to listen) on [`ReservedPort::addr`], a loopback
/// address.
///
/// UDP has no such reservation: a UDP socket bound to the port makes a later plain bind
/// (tokio's and std's `UdpSocket::bind` set no SO_REUSEADDR) fail with EADDRINUSE whatever
/// the addresses, and two sockets sharing it with SO_REUSEADDR split the datagrams.
#[derive(Debug)]
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
    port: u16,
}

impl ReservedPort {
    /// Needs no tokio runtime (only [`ReservedPort::listen`] does).
    pub fn new() -> Result<Self> {
        let socket =
            tokio::net::TcpSocket::new_v4().context("creating a socket to reserve a port")?;
        socket
            .set_reuseaddr(true)
            .context("setting SO_REUSEADDR on a reserved port")?;
        socket
            .bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            .context("binding a socket to reserve a port")?;
        let port = socket.local_addr()?.port();
        Ok(Self { socket, port })
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A listener on `127.0.0.1:port` (within a tokio runtime), for a server the test itself
    /// brings up late. It is bound before the reservation is released, so the port is never
    /// free in between; it listens on loopback only, not on every address the reservation
    /// covered.
    pub fn listen(self) -> Result<tokio::net::TcpListener> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(self.addr())
            .with_context(|| format!("binding reserved port {}", self.addr()))?;
        let listener = socket
            .listen(1024)
            .with_context(|| format!("listening on reserved port {}", self.addr()))?;
        drop(self.socket);
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(addr: SocketAddr) -> bool {
        std::net::TcpStream::connect(addr)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    /// What the tests' dead URLs rely on: a held port refuses connections and is never the
    /// answer to a bind to port 0 (which the kernel picks at random among free ports; a port
    /// merely released was handed to another test's receiver often enough to fail CI) — on
    /// any address.
    #[tokio::test]
    async fn a_reserved_port_is_refused_and_not_handed_out() {
        let reserved = ReservedPort::new().unwrap();
        assert!(refused(reserved.addr()));
        for host in ["127.0.0.1", "0.0.0.0", "127.0.0.2"] {
            for _ in 0..3000 {
                let other = std::net::TcpListener::bind((host, 0)).unwrap();
                assert_ne!(
                    other.local_addr().unwrap().port(),
                    reserved.port(),
                    "a port-0 bind on {host} got the reserved port"
                );
            }
        }
        // A server can still come up on it later.
        let listener = reserved.listen().unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(addr.ip().is_loopback());
    }

    /// What the ports handed to processes rely on: a server binding the port the way tokio's
    /// and std's `TcpListener::bind` do (SO_REUSEADDR), on loopback or on every address, is
    /// not stopped by the reservation and gets the connections.
    #[tokio::test]
    async fn a_process_binds_a_reserved_port_on_loopback_or_every_address() {
        for host in [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED] {
            let reserved = ReservedPort::new().unwrap();
            let tokio_listener =
                tokio::net::TcpListener::bind(SocketAddr::from((host, reserved.port())))
                    .await
                    .unwrap();
            tokio::net::TcpStream::connect(reserved.addr())
                .await
                .unwrap();
            tokio_listener.accept().await.unwrap();
            drop(tokio_listener);

            let std_listener =
                std::net::TcpListener::bind(SocketAddr::from((host, reserved.port()))).unwrap();
            std::net::TcpStream::connect(reserved.addr()).unwrap();
            std_listener.accept().unwrap();
            drop(std_listener);

            // The server gone, the port is held again: refused, not free.
            assert!(refused(reserved.addr()));
        }
    }
}
