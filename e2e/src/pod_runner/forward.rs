//! Forwards a host address's port to a loopback service: the local Redis, PostgreSQL and
//! kube-apiserver listen on 127.0.0.1, which inside a pod's network namespace is the pod's
//! own loopback. The listening socket uses SO_REUSEPORT so several runners (the demo's and a
//! test's) can forward the same address at once: they all lead to the same place.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// Listens on `from` and copies each connection to `to` until either side closes.
pub async fn forward(from: SocketAddr, to: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket
        .bind(from)
        .with_context(|| format!("cannot listen on {from}"))?;
    let listener = socket.listen(256)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, peer)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                match TcpStream::connect(to).await {
                    Ok(mut outbound) => {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    Err(e) => {
                        tracing::warn!(%from, %to, %peer, error = %e, "forward: cannot connect")
                    }
                }
            });
        }
    }))
}
