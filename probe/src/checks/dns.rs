//! DNS: one query over UDP against the configured server or the system's first
//! `nameserver`, timed from send to the matching answer; the answer's rcode and answer count
//! go into the sample. The query is encoded here (a header and one question) rather than with
//! a resolver library, which would retry, cache and hide the rcode.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fiberstack_model::{CheckKind, DnsCheck, DnsRecordType, Sample};
use serde_json::json;

use super::{down, millis};

pub fn qtype(t: DnsRecordType) -> u16 {
    match t {
        DnsRecordType::A => 1,
        DnsRecordType::Ns => 2,
        DnsRecordType::Cname => 5,
        DnsRecordType::Soa => 6,
        DnsRecordType::Ptr => 12,
        DnsRecordType::Mx => 15,
        DnsRecordType::Txt => 16,
        DnsRecordType::Aaaa => 28,
        DnsRecordType::Srv => 33,
        DnsRecordType::Caa => 257,
    }
}

pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// The query message: header (recursion desired) and one question of class IN.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// What matters of an answer: its rcode and how many answer records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub answers: u16,
    pub truncated: bool,
}

/// Reads the header of a response to query `id`; `None` when it is not one.
pub fn decode_answer(id: u16, query: &[u8], message: &[u8]) -> Option<Answer> {
    if message.len() < 12 || message[..2] != id.to_be_bytes() || message[2] & 0x80 == 0 {
        return None;
    }
    // The question must be ours too: an answer to an earlier query that reused the id
    // (or a forged one) names another question.
    if message.len() >= query.len() && message[12..query.len()] != query[12..] {
        return None;
    }
    Some(Answer {
        rcode: message[3] & 0x0F,
        answers: u16::from_be_bytes([message[6], message[7]]),
        truncated: message[2] & 0x02 != 0,
    })
}

/// The first `nameserver` of /etc/resolv.conf.
pub fn system_resolver() -> Option<IpAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.split('%').next()?.parse().ok())
            .flatten()
    })
}

fn server_addr(check: &DnsCheck) -> Result<SocketAddr, String> {
    match &check.server {
        Some(s) => s
            .parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("server {s:?} is not ip or ip:port")),
        None => system_resolver()
            .map(|ip| SocketAddr::new(ip, 53))
            .ok_or_else(|| "no server configured and no nameserver in /etc/resolv.conf".into()),
    }
}

pub async fn run(check: &DnsCheck, timeout: Duration) -> Sample {
    let server = match server_addr(check) {
        Ok(s) => s,
        Err(e) => return down(CheckKind::Dns, check.query.clone(), e),
    };
    let address = server.to_string();
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            return down(
                CheckKind::Dns,
                address,
                format!("cannot open a UDP socket: {e}"),
            );
        }
    };
    let id = fastrand::u16(..);
    let query = encode_query(id, &check.query, qtype(check.record_type));
    let started = Instant::now();
    if let Err(e) = socket.send_to(&query, server).await {
        return down(CheckKind::Dns, address, format!("send: {e}"));
    }
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ignored = 0u32;
    let answer = loop {
        match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Err(_) => {
                let mut s = down(
                    CheckKind::Dns,
                    address,
                    format!("timeout: no answer from {server} within {timeout:?}"),
                );
                s.metadata.insert("query".into(), json!(check.query));
                return s;
            }
            Ok(Err(e)) => return down(CheckKind::Dns, address, format!("receive: {e}")),
            Ok(Ok((n, from))) => {
                if from != server {
                    ignored += 1;
                    continue;
                }
                match decode_answer(id, &query, &buf[..n]) {
                    Some(a) => break a,
                    None => ignored += 1,
                }
            }
        }
    };
    let elapsed = started.elapsed();
    let mut s = down(CheckKind::Dns, address, String::new());
    s.error = None;
    s.latency_ms = Some(millis(elapsed));
    let rcode = rcode_name(answer.rcode);
    s.up = answer.rcode == 0 && answer.answers > 0;
    if answer.rcode != 0 {
        s.error = Some(format!("{} answered {rcode}", check.query));
    } else if answer.answers == 0 {
        s.error = Some(format!(
            "{} answered NOERROR with no {:?} record",
            check.query, check.record_type
        ));
    }
    s.metadata.insert("query".into(), json!(check.query));
    s.metadata.insert("rcode".into(), json!(rcode));
    s.metadata.insert("answers".into(), json!(answer.answers));
    if answer.truncated {
        s.metadata.insert("truncated".into(), json!(true));
    }
    if ignored > 0 {
        s.metadata.insert("ignored_messages".into(), json!(ignored));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        let q = encode_query(0x1234, "example.com.", 28);
        assert_eq!(
            q,
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
                b'e', 3, b'c', b'o', b'm', 0, 0, 28, 0, 1
            ]
        );
    }

    #[test]
    fn answers_to_other_queries_are_not_taken() {
        let q = encode_query(7, "a.example", 1);
        let mut r = q.clone();
        r[2] |= 0x80;
        r[3] = 3;
        r[7] = 0;
        assert_eq!(
            decode_answer(7, &q, &r),
            Some(Answer {
                rcode: 3,
                answers: 0,
                truncated: false
            })
        );
        assert_eq!(decode_answer(8, &q, &r), None);
        let other = encode_query(7, "b.example", 1);
        assert_eq!(decode_answer(7, &other, &r), None);
        assert_eq!(decode_answer(7, &q, &q), None, "a query is not an answer");
    }
}
