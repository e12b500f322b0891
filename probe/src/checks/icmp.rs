//! ICMP echo over unprivileged datagram sockets ("ping sockets", allowed for the groups in
//! `net.ipv4.ping_group_range`), IPv4 and IPv6: `count` echoes per round, `spacing` apart.
//!
//! Every round of a family shares one socket ([`icmp_socket`](super::icmp_socket)): its
//! demultiplexer hands a round the replies to the sequence numbers the round sent, from the
//! address it sent them to. Within a round a reply is checked against a per-round random
//! token at the head of the payload; replies that do not match (another source, another
//! token), duplicates and replies after their echo's timeout are counted apart and never as
//! received. An ICMP error answering an echo (destination unreachable, …) ends the wait for
//! that echo at once and its text is the round's error if nothing answered.
//!
//! RTTs are the kernel's receive time of the reply less the time read right before `sendto`.

use std::net::IpAddr;
use std::time::Duration;

use fiberstack_model::{CheckKind, IcmpCheck, Sample};
use serde_json::json;

use super::icmp_socket::{self, Event, IcmpSocket};
use super::{CheckContext, down, millis, resolve};

const TOKEN: usize = 8;

/// How to let unprivileged processes send ICMP echoes; logged when it is not allowed.
pub const PERMIT_HINT: &str = "unprivileged ICMP is not permitted on this node: allow the probe's group with `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"` (on Kubernetes: the pod securityContext sysctl net.ipv4.ping_group_range, which is namespaced and safe)";

/// `Err` with [`PERMIT_HINT`] when this process may not open ICMP sockets.
pub fn check_permitted() -> Result<(), String> {
    match icmp_socket::open_raw(true) {
        Ok(_) => Ok(()),
        Err(e) if is_not_permitted(&e) => Err(format!("{PERMIT_HINT} ({e})")),
        Err(e) => Err(format!("cannot open an ICMP socket: {e}")),
    }
}

fn is_not_permitted(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied
}

/// How a reply was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The first reply to one of this round's echoes, within its timeout.
    Counted,
    /// A second reply to an echo already answered.
    Duplicate,
    /// A reply to one of this round's echoes after its timeout: the echo counts as lost.
    Late,
    /// Not a reply to this round (other source, token, or an echo not sent).
    Foreign,
}

/// The bookkeeping of one round, apart from the sockets so that it can be tested alone.
/// Times are readings of one clock (the wall clock, as the kernel's timestamps are).
#[derive(Debug)]
pub struct Round {
    token: [u8; TOKEN],
    token_len: usize,
    timeout: Duration,
    sent_at: Vec<Option<Duration>>,
    rtt: Vec<Option<Duration>>,
    late_seen: Vec<bool>,
    failed: Vec<bool>,
    pub duplicates: u32,
    pub late: u32,
    pub foreign: u32,
    pub errors: u32,
}

impl Round {
    pub fn new(count: u32, payload_bytes: usize, timeout: Duration) -> Self {
        let n = count as usize;
        Self {
            token: fastrand::u64(..).to_be_bytes(),
            token_len: payload_bytes.min(TOKEN),
            timeout,
            sent_at: vec![None; n],
            rtt: vec![None; n],
            late_seen: vec![false; n],
            failed: vec![false; n],
            duplicates: 0,
            late: 0,
            foreign: 0,
            errors: 0,
        }
    }

    /// The payload of every echo of the round: the token, then filler.
    pub fn payload(&self, payload_bytes: usize) -> Vec<u8> {
        let mut p = vec![0xA5u8; payload_bytes];
        p[..self.token_len].copy_from_slice(&self.token[..self.token_len]);
        p
    }

    pub fn sent(&mut self, i: usize, at: Duration) {
        self.sent_at[i] = Some(at);
    }

    /// Classifies a reply to echo `i` whose payload begins with `head`, received at `at`.
    pub fn on_reply(&mut self, i: usize, head: &[u8], at: Duration) -> Reply {
        let sent_at = match self.sent_at.get(i) {
            Some(Some(t)) => *t,
            _ => {
                self.foreign += 1;
                return Reply::Foreign;
            }
        };
        if head.len() < self.token_len || head[..self.token_len] != self.token[..self.token_len] {
            self.foreign += 1;
            return Reply::Foreign;
        }
        if self.rtt[i].is_some() {
            self.duplicates += 1;
            return Reply::Duplicate;
        }
        let rtt = at.saturating_sub(sent_at);
        if rtt > self.timeout {
            if self.late_seen[i] {
                self.duplicates += 1;
                return Reply::Duplicate;
            }
            self.late_seen[i] = true;
            self.late += 1;
            return Reply::Late;
        }
        self.rtt[i] = Some(rtt);
        Reply::Counted
    }

    /// Echo `i` was answered by an ICMP error: it is lost, and nothing more is awaited for it.
    pub fn on_error(&mut self, i: usize) {
        if let Some(f) = self.failed.get_mut(i)
            && !*f
        {
            *f = true;
            self.errors += 1;
        }
    }

    /// Whether every echo sent so far has been answered (by a reply or an error).
    pub fn all_answered(&self, sent: usize) -> bool {
        self.rtt[..sent]
            .iter()
            .zip(&self.failed)
            .all(|(r, f)| r.is_some() || *f)
    }

    /// The figures of the round, `sent` echoes having left.
    pub fn sample(&self, sent: u32, address: String) -> Sample {
        let rtts: Vec<f64> = self.rtt.iter().flatten().map(|d| millis(*d)).collect();
        let received = rtts.len() as u32;
        let mut s = down(CheckKind::Icmp, address, String::new());
        s.error = None;
        s.sent = Some(sent);
        s.received = Some(received);
        if sent > 0 {
            s.packet_loss = Some(f64::from(sent - received) * 100.0 / f64::from(sent));
        }
        if received > 0 {
            s.up = true;
            let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
            s.latency_ms = Some(mean);
            s.latency_min_ms = rtts.iter().copied().reduce(f64::min);
            s.latency_max_ms = rtts.iter().copied().reduce(f64::max);
            if rtts.len() >= 2 {
                let diffs: f64 = rtts.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
                s.jitter_ms = Some(diffs / (rtts.len() - 1) as f64);
            }
        } else {
            s.error = Some(format!("no reply to {sent} echo requests"));
        }
        for (key, n) in [
            ("duplicates", self.duplicates),
            ("late", self.late),
            ("foreign", self.foreign),
            ("errors", self.errors),
        ] {
            if n > 0 {
                s.metadata.insert(key.into(), json!(n));
            }
        }
        s
    }
}

/// One round against `check.host`, on the context's shared socket of the family.
pub async fn run(check: &IcmpCheck, ctx: &CheckContext) -> Sample {
    let timeout = ctx.timeout;
    let (addr, _) = match resolve(&check.host, 0, timeout).await {
        Ok(a) => a,
        Err(e) => return down(CheckKind::Icmp, check.host.clone(), e),
    };
    let ip = addr.ip();
    let socket = match ctx.icmp.get(ip) {
        Ok(s) => s,
        Err(e) if is_not_permitted(&e) => {
            return down(
                CheckKind::Icmp,
                ip.to_string(),
                format!("{PERMIT_HINT} ({e})"),
            );
        }
        Err(e) => {
            return down(
                CheckKind::Icmp,
                ip.to_string(),
                format!("cannot open an ICMP socket: {e}"),
            );
        }
    };
    round(&socket, ip, check, timeout).await
}

/// Sends the round's echoes on `socket` and collects the replies.
pub async fn round(
    socket: &std::sync::Arc<IcmpSocket>,
    ip: IpAddr,
    check: &IcmpCheck,
    timeout: Duration,
) -> Sample {
    let count = check.count as usize;
    let payload_bytes = check.payload_bytes as usize;
    let spacing = check.spacing.as_std();
    let mut round = Round::new(check.count, payload_bytes, timeout);
    let payload = round.payload(payload_bytes);
    // Dropped when the round ends, also when it is aborted: its sequence numbers are freed.
    let mut echoes = socket.round(ip);
    let start = tokio::time::Instant::now();
    let mut next_send = start;
    let mut sent = 0usize;
    let mut last_send = start;
    let mut send_error = None;
    let mut icmp_error = None;
    loop {
        let all_sent = sent == count;
        if all_sent && round.all_answered(sent) {
            break;
        }
        let round_end = last_send + timeout;
        tokio::select! {
            _ = tokio::time::sleep_until(next_send), if !all_sent => {
                match echoes.send(sent, &payload).await {
                    Ok(at) => round.sent(sent, at),
                    Err(e) => {
                        round.sent(sent, icmp_socket::now());
                        send_error.get_or_insert_with(|| format!("send: {e}"));
                    }
                }
                last_send = tokio::time::Instant::now();
                sent += 1;
                next_send += spacing;
            }
            event = echoes.next() => match event {
                Event::Reply { echo, from, head, len, at } => {
                    if from == ip {
                        round.on_reply(echo, &head[..len], at);
                    } else {
                        round.foreign += 1;
                    }
                }
                Event::Error { echo, text } => {
                    round.on_error(echo);
                    icmp_error.get_or_insert(text);
                }
            },
            _ = tokio::time::sleep_until(round_end), if all_sent => break,
        }
    }
    drop(echoes);
    let mut sample = round.sample(sent as u32, ip.to_string());
    if !sample.up
        && let Some(e) = icmp_error.or(send_error)
    {
        sample.error = Some(super::truncate(format!(
            "no reply to {sent} echo requests; {e}"
        )));
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(count: u32) -> (Round, Duration) {
        let mut r = Round::new(count, 56, Duration::from_secs(1));
        let t0 = Duration::from_secs(1_700_000_000);
        for i in 0..count as usize {
            r.sent(i, t0 + Duration::from_millis(10 * i as u64));
        }
        (r, t0)
    }

    #[test]
    fn replies_are_matched_by_echo_and_token() {
        let (mut r, t0) = round(3);
        let payload = r.payload(56);
        assert_eq!(
            r.on_reply(0, &payload, t0 + Duration::from_millis(5)),
            Reply::Counted
        );
        assert_eq!(
            r.on_reply(0, &payload, t0 + Duration::from_millis(6)),
            Reply::Duplicate
        );
        let mut other = payload.clone();
        other[0] ^= 0xFF;
        assert_eq!(
            r.on_reply(1, &other, t0 + Duration::from_millis(15)),
            Reply::Foreign
        );
        assert_eq!(
            r.on_reply(7, &payload, t0 + Duration::from_millis(15)),
            Reply::Foreign
        );
        assert_eq!(
            r.on_reply(1, &payload, t0 + Duration::from_millis(2000)),
            Reply::Late
        );
        assert_eq!(
            r.on_reply(1, &payload, t0 + Duration::from_millis(2001)),
            Reply::Duplicate
        );
        assert_eq!(
            r.on_reply(2, &payload, t0 + Duration::from_millis(29)),
            Reply::Counted
        );
        let s = r.sample(3, "192.0.2.1".into());
        assert_eq!((s.sent, s.received), (Some(3), Some(2)));
        let loss = s.packet_loss.unwrap();
        assert!((loss - 100.0 / 3.0).abs() < 1e-9, "{loss}");
        assert_eq!(s.metadata["duplicates"], json!(2));
        assert_eq!(s.metadata["late"], json!(1));
        assert_eq!(s.metadata["foreign"], json!(2));
        assert!(s.up);
    }

    #[test]
    fn a_reply_shorter_than_the_token_is_foreign() {
        let (mut r, t0) = round(1);
        let payload = r.payload(56);
        assert_eq!(r.on_reply(0, &payload[..4], t0), Reply::Foreign);
        assert_eq!(r.on_reply(0, &payload[..8], t0), Reply::Counted);
    }

    #[test]
    fn latency_and_jitter_figures() {
        let (mut r, t0) = round(4);
        let payload = r.payload(56);
        // RTTs 10, 14, 11, 11 ms → jitter (4 + 3 + 0) / 3.
        for (i, rtt) in [10u64, 14, 11, 11].into_iter().enumerate() {
            let at = t0 + Duration::from_millis(10 * i as u64 + rtt);
            assert_eq!(r.on_reply(i, &payload, at), Reply::Counted);
        }
        let s = r.sample(4, "192.0.2.1".into());
        assert!((s.latency_ms.unwrap() - 11.5).abs() < 1e-6);
        assert!((s.latency_min_ms.unwrap() - 10.0).abs() < 1e-6);
        assert!((s.latency_max_ms.unwrap() - 14.0).abs() < 1e-6);
        assert!((s.jitter_ms.unwrap() - 7.0 / 3.0).abs() < 1e-6);
        assert_eq!(s.packet_loss, Some(0.0));
        assert!(s.metadata.is_empty());
    }

    #[test]
    fn an_icmp_error_ends_the_wait_for_its_echo_and_is_lost() {
        let (mut r, t0) = round(3);
        let payload = r.payload(56);
        assert_eq!(
            r.on_reply(0, &payload, t0 + Duration::from_millis(1)),
            Reply::Counted
        );
        assert!(!r.all_answered(3));
        r.on_error(1);
        r.on_error(1);
        assert!(!r.all_answered(3));
        r.on_error(2);
        assert!(r.all_answered(3));
        let s = r.sample(3, "192.0.2.1".into());
        assert_eq!((s.sent, s.received), (Some(3), Some(1)));
        assert_eq!(s.metadata["errors"], json!(2));
    }

    #[test]
    fn no_reply_is_down_with_full_loss() {
        let (r, _) = round(5);
        let s = r.sample(5, "192.0.2.1".into());
        assert!(!s.up);
        assert_eq!(s.packet_loss, Some(100.0));
        assert_eq!(s.received, Some(0));
        assert!(s.error.unwrap().contains("no reply to 5"));
    }

    #[test]
    fn tiny_payloads_carry_a_shorter_token() {
        let mut r = Round::new(1, 2, Duration::from_secs(1));
        let t0 = Duration::from_secs(1_700_000_000);
        r.sent(0, t0);
        let payload = r.payload(2);
        assert_eq!(payload.len(), 2);
        assert_eq!(r.on_reply(0, &payload, t0), Reply::Counted);
    }
}
