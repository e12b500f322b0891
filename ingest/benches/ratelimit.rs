//! The per-node rate limiter alone, against the hand-written token bucket it replaced (kept
//! below as `HandWritten`, unchanged but for its name, so the choice can be measured again):
//! ns per check on one hot node and round the names of 10,000 nodes, on one thread and on
//! two, each with checks that are let through and checks that are refused; and the memory of
//! 100,000 distinct nodes (VmRSS growth, each limiter in a process of its own), then after
//! they have all been idle long enough to be forgotten. Prints figures; never fails on time.
//!
//!   cargo bench -p fiber-ingest --bench ratelimit
//!
//! Both read the monotonic clock once per check, as the service does. The 10,000-node figures
//! include the limiters' sweeps of idle nodes.
//!
//! Measured on a 2-vCPU AMD EPYC VM (KVM, tsc clock, 24 GB), rustc 1.95, bench profile,
//! governor 0.10.4, while other builds shared the machine (the two-thread runs gain nothing
//! from the second core there). ns per check:
//!
//! | checks      | nodes                  | hand-written | governor |
//! |-------------|------------------------|-------------:|---------:|
//! | let through | 1                      |         69.1 |     70.7 |
//! | let through | 10,000                 |         76.6 |     83.2 |
//! | let through | 10,000, 2 threads      |         76.9 |     84.0 |
//! | refused     | 1                      |         76.7 |     98.3 |
//! | refused     | 10,000                 |         81.0 |     95.7 |
//! | refused     | 10,000, 2 threads      |         83.0 |     97.6 |
//! | whole again | 1                      |         71.8 |     73.0 |
//! | whole again | 10,000                 |         75.7 |    143.7 |
//! | whole again | 10,000, 2 threads      |         75.6 |    117.7 |
//!
//! Memory of 100,000 nodes: hand-written 12,204 KiB (124 B a node), still 12,204 KiB once
//! they are forgotten; governor 10,188 KiB (104 B a node), 5,936 KiB once they are forgotten.

use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fiber_ingest::ratelimit::RateLimiter;
use governor::clock::FakeRelativeClock;

/// The limiter as it was before `governor`: one `HashMap` of `f64` buckets behind a `Mutex`.
#[derive(Debug)]
pub struct HandWritten {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets untouched this long are forgotten (a full bucket is the same as none).
const IDLE_FORGET: Duration = Duration::from_secs(600);

impl HandWritten {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self {
            rate: rate_per_second.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `node`'s bucket; `Err(wait)` says how long until one is available.
    pub fn check(&self, node: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < IDLE_FORGET);
        }
        let bucket = buckets.entry(node.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

/// The two limiters behind one face.
trait Limiter: Sync {
    fn check(&self, node: &str) -> Result<(), Duration>;
}

impl Limiter for HandWritten {
    fn check(&self, node: &str) -> Result<(), Duration> {
        HandWritten::check(self, node, Instant::now())
    }
}

impl Limiter for RateLimiter {
    fn check(&self, node: &str) -> Result<(), Duration> {
        RateLimiter::check(self, node)
    }
}

/// Node names as Kubernetes gives them.
fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "ip-10-{}-{}-{}.eu-west-1.compute.internal",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )
        })
        .collect()
}

/// Runs of each measurement; the shortest counts (the others were disturbed).
const RUNS: usize = 7;

/// Checks per run.
const CHECKS: usize = 1_000_000;

/// One run of [`CHECKS`] checks spread over `threads` threads, round `nodes`: ns of wall time
/// per check.
fn ns_per_check(limiter: &dyn Limiter, nodes: &[String], threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..CHECKS / threads {
                    let node = &nodes[(i * threads + t) % nodes.len()];
                    let _ = black_box(limiter.check(black_box(node)));
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / CHECKS as f64
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

const MEMORY_NODES: usize = 100_000;

/// In a process of its own: VmRSS growth (KiB) of `which` limiter holding 100,000 nodes, then
/// once they have been idle long enough to be forgotten and another node has been checked
/// enough times for the limiter to sweep.
fn memory(which: &str) -> (u64, u64) {
    let nodes = names(MEMORY_NODES);
    let before = vm_rss_kib();
    let (full, forgotten) = match which {
        "hand-written" => {
            let limiter = HandWritten::new(5.0, 50);
            let t0 = Instant::now();
            for node in &nodes {
                let _ = black_box(limiter.check(node, t0));
            }
            let full = vm_rss_kib();
            let later = t0 + IDLE_FORGET + Duration::from_secs(1);
            for _ in 0..MEMORY_NODES {
                let _ = black_box(limiter.check("busy", later));
            }
            (full, vm_rss_kib())
        }
        "governor" => {
            let clock = FakeRelativeClock::default();
            let limiter = RateLimiter::with_clock(5.0, 50, clock.clone());
            for node in &nodes {
                let _ = black_box(limiter.check(node));
            }
            let full = vm_rss_kib();
            clock.advance(Duration::from_secs(11));
            for _ in 0..MEMORY_NODES {
                let _ = black_box(limiter.check("busy"));
            }
            assert_eq!(limiter.remembered_nodes(), 1);
            (full, vm_rss_kib())
        }
        other => panic!("no limiter {other}"),
    };
    (
        full.saturating_sub(before),
        forgotten.saturating_sub(before),
    )
}

fn main() {
    if let Ok(which) = std::env::var("RATELIMIT_BENCH_MEMORY") {
        let (full, forgotten) = memory(&which);
        println!("{full} {forgotten}");
        return;
    }
    let hot = names(1);
    let many = names(10_000);
    type Make = fn(f64, u32) -> Box<dyn Limiter>;
    let limiters: [(&str, Make); 2] = [
        ("hand-written", |rate, burst| {
            Box::new(HandWritten::new(rate, burst))
        }),
        ("governor", |rate, burst| {
            Box::new(RateLimiter::new(rate, burst))
        }),
    ];
    // Let through: a burst no node uses up within a run. Refused: the default 5/s, burst 50,
    // which a node checked back to back is over after its first 50. Whole again: each node's
    // allowance is whole by its next check, so governor forgets every node at each sweep and
    // takes it in again (the hand-written map keeps a node for 10 minutes).
    let quotas = [
        ("let through", 5.0, 1_000_000),
        ("refused", 5.0, 50),
        ("whole again", 1e9, 1_000_000),
    ];
    let cells = [
        ("1 node", &hot, 1),
        ("10,000 nodes", &many, 1),
        ("10,000 nodes, 2 threads", &many, 2),
    ];
    println!(
        "ns per check: wall time / checks, the shortest of {RUNS} runs of {CHECKS} checks each, the two limiters' runs taking turns"
    );
    println!(
        "{:<12} {:<24} {:>13} {:>9}",
        "checks", "nodes", "hand-written", "governor"
    );
    for (what, rate, burst) in quotas {
        for (cell, nodes, threads) in cells {
            let mut shortest = [f64::INFINITY; 2];
            for _ in 0..RUNS {
                for (i, (_, make)) in limiters.iter().enumerate() {
                    let limiter = make(rate, burst);
                    shortest[i] = shortest[i].min(ns_per_check(&*limiter, nodes, threads));
                }
            }
            println!(
                "{what:<12} {cell:<24} {:>13.1} {:>9.1}",
                shortest[0], shortest[1]
            );
        }
    }
    println!();
    println!(
        "memory, VmRSS growth of a process of its own, {MEMORY_NODES} nodes of ~40-byte names"
    );
    println!(
        "{:<14} {:>16} {:>26}",
        "limiter", "held", "after they are forgotten"
    );
    for which in ["hand-written", "governor"] {
        let out = Command::new(std::env::current_exe().expect("the bench's own path"))
            .env("RATELIMIT_BENCH_MEMORY", which)
            .output()
            .expect("running the memory measurement");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let kib: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [full, forgotten] = kib[..] else {
            panic!("memory measurement printed {text:?}");
        };
        println!(
            "{which:<14} {:>9} KiB ({:>3} B/node) {:>15} KiB",
            full,
            full * 1024 / MEMORY_NODES as u64,
            forgotten
        );
    }
}
