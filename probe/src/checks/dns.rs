//! DNS: one query over UDP against the configured server or the system's first
//! `nameserver`, timed from send to the kernel's receipt of the matching answer (its
//! `SO_TIMESTAMPNS`); the answer's rcode and answer count go into the sample.
//!
//! The messages are `hickory-proto`'s: it encodes the query (header, one question of class
//! IN) and decodes the whole answer, so an answer whose records do not parse is reported as
//! malformed rather than read from its header alone. The protocol crate only: no resolver,
//! no networking, no DNSSEC.
//!
//! What stays here, and why: the UDP socket (one per address family shared by every round,
//! answers handed to a round by server address and query id: [`super::dns_socket`]), the
//! timeout and the timing, because a resolver or a DNS client would
//! retry, cache, choose servers and turn an rcode into an error, and the latency measured
//! would then not be one round trip; and the decision whether a datagram answers our query
//! (id, response flag, our question), since a stray or forged datagram must be ignored, not
//! measured.

use std::net::{IpAddr, SocketAddr};

use fiberstack_model::{CheckKind, DnsCheck, DnsRecordType, Sample};
use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};
use serde_json::json;

use super::dns_socket::Event;
use super::icmp_socket::now;
use super::{CheckContext, down, millis};

pub fn record_type(t: DnsRecordType) -> RecordType {
    match t {
        DnsRecordType::A => RecordType::A,
        DnsRecordType::Ns => RecordType::NS,
        DnsRecordType::Cname => RecordType::CNAME,
        DnsRecordType::Soa => RecordType::SOA,
        DnsRecordType::Ptr => RecordType::PTR,
        DnsRecordType::Mx => RecordType::MX,
        DnsRecordType::Txt => RecordType::TXT,
        DnsRecordType::Aaaa => RecordType::AAAA,
        DnsRecordType::Srv => RecordType::SRV,
        DnsRecordType::Caa => RecordType::CAA,
    }
}

/// The rcode as `dig` names it.
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// The query message: recursion desired and one question of class IN. The name's labels are
/// the bytes between its dots as written: no IDNA conversion, no escapes.
pub fn query(id: u16, name: &str, record_type: RecordType) -> Result<Message, String> {
    let qname = Name::from_labels(name.trim_end_matches('.').split('.').map(str::as_bytes))
        .map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(qname, record_type));
    Ok(message)
}

/// What matters of an answer: its rcode and how many answer records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: usize,
    pub truncated: bool,
}

/// What a datagram from the server is to our query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Answer(Answer),
    /// Not a response to our query: another id, a query, another question.
    NotOurs,
    /// A response with our id that does not decode (cut short, or records that do not parse).
    Malformed {
        error: String,
        truncated: bool,
    },
}

/// Reads a datagram received from the server in answer to `query`.
pub fn read_reply(query: &Message, datagram: &[u8]) -> Reply {
    let message = match Message::from_vec(datagram) {
        Ok(m) => m,
        Err(e) => return unreadable(query.id, datagram, e),
    };
    if message.id != query.id || message.message_type != MessageType::Response {
        return Reply::NotOurs;
    }
    // The question must be ours too: an answer to an earlier query that reused the id (or a
    // forged one) names another question. A server may leave the question out of an error
    // answer (FORMERR, NOTIMP).
    let ours = message.queries == query.queries
        || (message.queries.is_empty() && message.response_code != ResponseCode::NoError);
    if !ours {
        return Reply::NotOurs;
    }
    Reply::Answer(Answer {
        rcode: message.response_code,
        answers: message.answers.len(),
        truncated: message.truncation,
    })
}

/// A datagram that does not decode is ours when it carries our id and is a response (or is
/// too short to say more than its id).
fn unreadable(id: u16, datagram: &[u8], error: DecodeError) -> Reply {
    let (ours, truncated) = match Header::read(&mut BinDecoder::new(datagram)) {
        Ok(h) => (
            h.id == id && h.message_type == MessageType::Response,
            h.truncation,
        ),
        Err(_) => (datagram.starts_with(&id.to_be_bytes()), false),
    };
    if !ours {
        return Reply::NotOurs;
    }
    Reply::Malformed {
        error: error.to_string(),
        truncated,
    }
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

pub async fn run(check: &DnsCheck, ctx: &CheckContext) -> Sample {
    let timeout = ctx.timeout;
    let server = match server_addr(check) {
        Ok(s) => s,
        Err(e) => return down(CheckKind::Dns, check.query.clone(), e),
    };
    let address = server.to_string();
    let socket = match ctx.dns.get(server) {
        Ok(s) => s,
        Err(e) => {
            return down(
                CheckKind::Dns,
                address,
                format!("cannot open a UDP socket: {e}"),
            );
        }
    };
    // Registered before the query is sent; dropping it (the round ends or is aborted) takes
    // the registration out.
    let mut pending = match socket.register(server) {
        Ok(p) => p,
        Err(e) => return down(CheckKind::Dns, address, e.to_string()),
    };
    let query = match query(pending.id(), &check.query, record_type(check.record_type)) {
        Ok(q) => q,
        Err(e) => return down(CheckKind::Dns, address, e),
    };
    let datagram = match query.to_vec() {
        Ok(d) => d,
        Err(e) => {
            return down(
                CheckKind::Dns,
                address,
                format!("cannot encode the query for {:?}: {e}", check.query),
            );
        }
    };
    // On the clock of the kernel's receive timestamps.
    let started = now();
    if let Err(e) = pending.send(&datagram).await {
        return down(CheckKind::Dns, address, format!("send: {e}"));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ignored = 0u32;
    let (answer, answered_at) = loop {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Err(_) => {
                let mut s = down(
                    CheckKind::Dns,
                    address,
                    format!("timeout: no answer from {server} within {timeout:?}"),
                );
                s.metadata.insert("query".into(), json!(check.query));
                return s;
            }
            Ok(None) => {
                return down(
                    CheckKind::Dns,
                    address,
                    "receive: the shared DNS socket closed".into(),
                );
            }
            Ok(Some(Event::Stray)) => ignored += 1,
            Ok(Some(Event::Datagram { bytes, at })) => match read_reply(&query, &bytes) {
                Reply::Answer(a) => break (a, at),
                Reply::NotOurs => ignored += 1,
                Reply::Malformed { error, truncated } => {
                    let mut s = down(
                        CheckKind::Dns,
                        address,
                        format!("malformed answer from {server}: {error}"),
                    );
                    s.metadata.insert("query".into(), json!(check.query));
                    if truncated {
                        s.metadata.insert("truncated".into(), json!(true));
                    }
                    if ignored > 0 {
                        s.metadata.insert("ignored_messages".into(), json!(ignored));
                    }
                    return s;
                }
            },
        }
    };
    // When the kernel received the answer, not when the runtime got to it.
    let elapsed = answered_at.saturating_sub(started);
    let mut s = down(CheckKind::Dns, address, String::new());
    s.error = None;
    s.latency_ms = Some(millis(elapsed));
    let rcode = rcode_name(answer.rcode);
    s.up = answer.rcode == ResponseCode::NoError && answer.answers > 0;
    if answer.rcode != ResponseCode::NoError {
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

    /// The wire form of `query(id, name, t)`.
    fn wire(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        query(id, name, t).unwrap().to_vec().unwrap()
    }

    /// An answer to `q` (its bytes) with `rcode` and `answers` A records, as a server sends it.
    fn answer_to(q: &[u8], rcode: u8, answers: u8) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[3] = 0x80 | rcode;
        r[7] = answers;
        for k in 0..answers {
            r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, k + 1]);
        }
        r
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            wire(0x1234, "example.com.", RecordType::AAAA),
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
                b'e', 3, b'c', b'o', b'm', 0, 0, 28, 0, 1
            ]
        );
        // Every record type of the configuration, with its number on the wire.
        for (t, number) in [
            (DnsRecordType::A, 1u16),
            (DnsRecordType::Ns, 2),
            (DnsRecordType::Cname, 5),
            (DnsRecordType::Soa, 6),
            (DnsRecordType::Ptr, 12),
            (DnsRecordType::Mx, 15),
            (DnsRecordType::Txt, 16),
            (DnsRecordType::Aaaa, 28),
            (DnsRecordType::Srv, 33),
            (DnsRecordType::Caa, 257),
        ] {
            let q = wire(1, "a.example", record_type(t));
            assert_eq!(q[q.len() - 4..], [(number >> 8) as u8, number as u8, 0, 1]);
        }
    }

    #[test]
    fn names_that_are_not_dns_names_are_refused() {
        assert!(query(1, "a..example", RecordType::A).is_err());
        assert!(query(1, &format!("{}.example", "x".repeat(64)), RecordType::A).is_err());
    }

    #[test]
    fn answers_to_other_queries_are_not_taken() {
        let q = query(7, "a.example", RecordType::A).unwrap();
        let bytes = q.to_vec().unwrap();
        let r = answer_to(&bytes, 3, 0);
        assert_eq!(
            read_reply(&q, &r),
            Reply::Answer(Answer {
                rcode: ResponseCode::NXDomain,
                answers: 0,
                truncated: false
            })
        );
        let r = answer_to(&bytes, 0, 2);
        assert_eq!(
            read_reply(&q, &r),
            Reply::Answer(Answer {
                rcode: ResponseCode::NoError,
                answers: 2,
                truncated: false
            })
        );
        let other_id = query(8, "a.example", RecordType::A).unwrap();
        assert_eq!(read_reply(&other_id, &r), Reply::NotOurs);
        let other_name = query(7, "b.example", RecordType::A).unwrap();
        assert_eq!(read_reply(&other_name, &r), Reply::NotOurs);
        let other_type = query(7, "a.example", RecordType::AAAA).unwrap();
        assert_eq!(read_reply(&other_type, &r), Reply::NotOurs);
        assert_eq!(
            read_reply(&q, &bytes),
            Reply::NotOurs,
            "a query is not an answer"
        );
    }

    #[test]
    fn the_question_may_be_left_out_of_an_error_answer() {
        let q = query(7, "a.example", RecordType::A).unwrap();
        let refused = [0, 7, 0x81, 0x85, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            read_reply(&q, &refused),
            Reply::Answer(Answer {
                rcode: ResponseCode::Refused,
                answers: 0,
                truncated: false
            })
        );
        let mut no_question_noerror = refused;
        no_question_noerror[3] = 0x80;
        assert_eq!(read_reply(&q, &no_question_noerror), Reply::NotOurs);
    }

    #[test]
    fn truncated_and_garbage_answers_are_malformed_never_a_panic() {
        let q = query(0x0102, "a.example", RecordType::A).unwrap();
        let full = answer_to(&q.to_vec().unwrap(), 0, 2);
        // Cut at every length: too short to carry our id, then malformed, then whole.
        for n in 0..full.len() {
            let reply = read_reply(&q, &full[..n]);
            if n < 2 {
                assert_eq!(reply, Reply::NotOurs, "{n} bytes");
            } else {
                assert!(
                    matches!(&reply, Reply::Malformed { error, .. } if !error.is_empty()),
                    "{n} bytes: {reply:?}"
                );
            }
        }
        assert!(matches!(read_reply(&q, &full), Reply::Answer(_)));

        // The TC flag is reported with the error.
        let mut cut = full[..full.len() - 3].to_vec();
        cut[2] |= 0x02;
        assert_eq!(
            read_reply(&q, &cut),
            Reply::Malformed {
                error: "incorrect rdata length read: 1 expected: 4".into(),
                truncated: true
            }
        );

        // A record whose length runs past the message, and a name pointer that loops.
        let mut bad_length = full.clone();
        let rdlength = full.len() - 6;
        bad_length[rdlength] = 0xFF;
        assert!(matches!(
            read_reply(&q, &bad_length),
            Reply::Malformed { .. }
        ));
        let mut looping = full.clone();
        let name = full.len() - 16;
        looping[name + 1] = name as u8;
        assert!(matches!(read_reply(&q, &looping), Reply::Malformed { .. }));

        // Garbage: whatever it is read as, nothing panics.
        let mut rng = fastrand::Rng::with_seed(53);
        for _ in 0..20_000 {
            let len = rng.usize(0..600);
            let mut g: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len >= 3 && rng.bool() {
                // Often with our id and the response flag, so the decoder reads further.
                g[..2].copy_from_slice(&0x0102u16.to_be_bytes());
                g[2] |= 0x80;
            }
            let _ = read_reply(&q, &g);
            // And garbage after a valid header and question.
            let mut tail = full[..full.len() - 32].to_vec();
            tail.extend_from_slice(&g);
            let _ = read_reply(&q, &tail);
        }
    }

    #[test]
    fn rcode_names() {
        assert_eq!(rcode_name(ResponseCode::NoError), "NOERROR");
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::from_low(9)), "RCODE9");
    }
}
