//! TCP: how long the three-way handshake takes. Refused, reset and timeout are told apart
//! in `error` because they mean different things (nothing listens; something in the path
//! cut the connection; packets vanish).

use std::time::{Duration, Instant};

use fiberstack_model::{CheckKind, Sample, TcpCheck};
use serde_json::json;

use super::{down, millis, resolve};

pub async fn run(check: &TcpCheck, timeout: Duration) -> Sample {
    let started = Instant::now();
    let address = format!("{}:{}", check.host, check.port);
    let (addr, dns) = match resolve(&check.host, check.port, timeout).await {
        Ok(a) => a,
        Err(e) => return down(CheckKind::Tcp, address, e),
    };
    let address = addr.to_string();
    let remaining = timeout.saturating_sub(started.elapsed());
    let connect_started = Instant::now();
    let result = tokio::time::timeout(remaining, tokio::net::TcpStream::connect(addr)).await;
    let elapsed = connect_started.elapsed();
    let mut sample = match result {
        Err(_) => down(
            CheckKind::Tcp,
            address,
            format!("timeout: no answer within {timeout:?}"),
        ),
        Ok(Err(e)) => down(CheckKind::Tcp, address, crate::net::describe(&e)),
        Ok(Ok(_stream)) => {
            let mut s = down(CheckKind::Tcp, address, String::new());
            s.up = true;
            s.error = None;
            s.latency_ms = Some(millis(elapsed));
            s
        }
    };
    if let Some(d) = dns {
        sample.metadata.insert("dns_ms".into(), json!(millis(d)));
    }
    sample
}
