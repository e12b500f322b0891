//! Delivery against a receiver speaking the ingest contract, with the real `fiber-probe`
//! binary measuring real TCP targets.

mod support;

use std::time::Duration;

use fiber_probe::buffer::Buffer;
use fiber_probe::metrics::Stats;
use support::*;

const INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test]
async fn receiver_down_then_up_every_sample_arrives_exactly_once() {
    let scratch = Scratch::new("down-up");
    let (target, _t) = tcp_target().await;
    let port = ReservedPort::new().unwrap();
    let url = port.url();
    let mut probe = ProbeProcess::start_tcp(&scratch, &["a", "b", "c"], target, &[url], "", &[]);
    // Down for 5 s: about 15 samples wait in the buffer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let receiver = Receiver::start_on_reserved(port);
    wait_for("the backlog to arrive", Duration::from_secs(30), || {
        (receiver.keys().len() >= 24).then_some(())
    })
    .await;
    assert!(probe.terminate().await.success());
    let keys = receiver.keys();
    let dup: Vec<_> = keys.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dup.is_empty(), "samples sent more than once: {dup:?}");
    assert_no_gaps(&keys, INTERVAL, 0);
    let by_target = times_by_target(&keys);
    assert_eq!(by_target.len(), 3);
    // The first samples are from the outage: the earliest is ≥ 4 s before the receiver's start.
    for times in by_target.values() {
        assert!(times.len() >= 8, "{times:?}");
    }
    // SIGTERM flushed: nothing is left in the buffer.
    let buffer = Buffer::open(&scratch.path("buf"), 4 << 20, Default::default()).unwrap();
    let log = probe.log_text();
    assert_eq!(
        buffer.pending(),
        0,
        "left in the buffer; the probe's log:\n{log}"
    );
    assert!(log.contains("ingest unreachable"), "{log}");
}

#[tokio::test]
async fn kill_9_then_restart_delivers_what_was_buffered() {
    let scratch = Scratch::new("kill9");
    let (target, _t) = tcp_target().await;
    let port = ReservedPort::new().unwrap();
    let url = port.url();
    let config = scratch.path("probe.yaml");
    let buf = scratch.path("buf");
    std::fs::write(
        &config,
        tcp_config("n1", &["a", "b"], target, &[url], &buf, ""),
    )
    .unwrap();
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    probe.kill9();
    // What the killed process left on disk.
    let left = {
        let b = Buffer::open(&buf, 4 << 20, std::sync::Arc::new(Stats::default())).unwrap();
        b.peek(usize::MAX).unwrap().samples
    };
    assert!(
        left.len() >= 4,
        "only {} samples buffered in 4 s",
        left.len()
    );
    let receiver = Receiver::start_on_reserved(port);
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[]);
    let wanted: Vec<(String, String)> = left
        .iter()
        .map(|s| (s.target.clone(), s.time.to_rfc3339()))
        .collect();
    wait_for(
        "the buffered samples after restart",
        Duration::from_secs(30),
        || {
            let keys = receiver.keys();
            // Everything the killed process buffered, and something the new one measured.
            (keys.len() > wanted.len()
                && wanted
                    .iter()
                    .all(|(t, time)| keys.keys().any(|k| &k.2 == t && &k.3 == time)))
            .then_some(())
        },
    )
    .await;
    assert!(probe.terminate().await.success());
    let keys = receiver.keys();
    assert!(keys.len() > left.len(), "the restarted probe measured too");
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
}

#[tokio::test]
async fn retry_after_on_429_and_503_is_honoured() {
    let scratch = Scratch::new("retry-after");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    {
        let mut st = receiver.state.lock().unwrap();
        st.script.push_back(Scripted::Status(429, Some(2)));
        st.script.push_back(Scripted::Status(503, Some(3)));
    }
    let mut probe = ProbeProcess::start_tcp(&scratch, &["a"], target, &[receiver.url()], "", &[]);
    wait_for("a delivered batch", Duration::from_secs(20), || {
        (!receiver.keys().is_empty()).then_some(())
    })
    .await;
    assert!(probe.terminate().await.success());
    let requests = receiver.state.lock().unwrap().requests.clone();
    let statuses: Vec<u16> = requests.iter().map(|r| r.1).collect();
    assert_eq!(&statuses[..3], [429, 503, 202]);
    let gap1 = requests[1].0 - requests[0].0;
    let gap2 = requests[2].0 - requests[1].0;
    assert!(
        gap1 >= Duration::from_secs(2),
        "429 Retry-After: 2 but retried after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_secs(3),
        "503 Retry-After: 3 but retried after {gap2:?}"
    );
    assert!(
        gap1 < Duration::from_secs(4) && gap2 < Duration::from_secs(5),
        "{gap1:?} {gap2:?}"
    );
    assert_no_gaps(&receiver.keys(), INTERVAL, 0);
}

#[tokio::test]
async fn rejected_samples_are_dropped_counted_and_not_retried() {
    let scratch = Scratch::new("rejected");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    receiver
        .state
        .lock()
        .unwrap()
        .reject_targets
        .push("bad".into());
    let metrics = ReservedPort::new().unwrap();
    let mut probe = ProbeProcess::start_tcp(
        &scratch,
        &["good", "bad"],
        target,
        &[receiver.url()],
        &format!("metricsListen: {}\n", metrics.addr()),
        &[],
    );
    wait_for("rejections", Duration::from_secs(20), || {
        (receiver.state.lock().unwrap().rejected_keys.len() >= 4).then_some(())
    })
    .await;
    let text = reqwest::get(format!("{}/metrics", metrics.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(probe.terminate().await.success());
    let st = receiver.state.lock().unwrap();
    assert!(
        st.rejected_keys.values().all(|n| *n == 1),
        "a rejected sample was sent again: {:?}",
        st.rejected_keys
    );
    assert!(st.keys.keys().all(|k| k.2 == "good"));
    fiberstack_e2e::promtool::check_metrics(&text).unwrap();
    let value = |series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    // The data path's one shape: received, sent, discarded by reason, send duration.
    assert!(
        value("fiber_probe_discarded_samples_total{reason=\"rejected\"}") >= 4,
        "{text}"
    );
    assert!(
        value("fiber_probe_received_samples_total{kind=\"tcp\"}") >= 1,
        "{text}"
    );
    assert!(value("fiber_probe_sent_samples_total") >= 1, "{text}");
    assert!(
        value("fiber_probe_send_duration_seconds_count") >= 1,
        "{text}"
    );
    assert_eq!(
        value("fiber_probe_errors_total{stage=\"send\",error_type=\"refused\"}"),
        0,
        "{text}"
    );
}

#[tokio::test]
async fn wrong_token_is_logged_and_does_not_spin() {
    let scratch = Scratch::new("token");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    let metrics = ReservedPort::new().unwrap();
    let mut probe = ProbeProcess::start_tcp(
        &scratch,
        &["a"],
        target,
        &[receiver.url()],
        &format!("metricsListen: {}\n", metrics.addr()),
        &[("FIBER_TOKEN", "wrong")],
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = reqwest::get(format!("{}/metrics", metrics.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(probe.terminate().await.success());
    assert!(
        text.contains("fiber_probe_errors_total{stage=\"send\",error_type=\"refused\"} 1"),
        "the refused token counted as a send error: {text}"
    );
    assert!(text.contains("fiber_probe_sent_samples_total 0"), "{text}");
    let requests = receiver.state.lock().unwrap().requests.clone();
    let statuses: Vec<u16> = requests.iter().map(|r| r.1).collect();
    // One at start, then one per minute; the SIGTERM flush may try once more.
    assert!(
        (1..=2).contains(&requests.len()),
        "{} requests in 5 s with a refused token, answered {statuses:?}; the probe's log:\n{}",
        requests.len(),
        probe.log_text()
    );
    assert!(requests.iter().all(|r| r.1 == 401));
    assert!(probe.log_text().contains("ingest refused the token"));
}

#[tokio::test]
async fn fails_over_to_the_next_url() {
    let scratch = Scratch::new("failover");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    let dead_port = ReservedPort::new().unwrap();
    let dead = dead_port.url();
    let mut probe =
        ProbeProcess::start_tcp(&scratch, &["a"], target, &[dead, receiver.url()], "", &[]);
    wait_for(
        "samples through the fallback",
        Duration::from_secs(20),
        || (receiver.keys().len() >= 3).then_some(()),
    )
    .await;
    assert!(probe.terminate().await.success());
    assert_no_gaps(&receiver.keys(), INTERVAL, 0);
}

#[tokio::test]
async fn ingest_url_and_node_from_the_environment() {
    let scratch = Scratch::new("env");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    let config = scratch.path("probe.yaml");
    let text = tcp_config(
        "file-node",
        &["a"],
        target,
        &["http://127.0.0.1:1".into()],
        &scratch.path("unused"),
        "",
    );
    std::fs::write(&config, text).unwrap();
    let buf = scratch.path("env-buf");
    let mut probe = ProbeProcess::start(
        &config,
        &scratch.path("log"),
        &[
            ("FIBER_INGEST_URL", &receiver.url()),
            ("NODE_NAME", "env-node"),
            ("FIBER_BUFFER_DIR", buf.to_str().unwrap()),
        ],
    );
    wait_for("samples", Duration::from_secs(20), || {
        (!receiver.keys().is_empty()).then_some(())
    })
    .await;
    assert!(probe.terminate().await.success());
    assert!(receiver.keys().keys().all(|k| k.0 == "env-node"));
    assert!(buf.exists() && !scratch.path("unused").exists());
}

#[tokio::test]
async fn config_change_is_picked_up_without_restart() {
    let scratch = Scratch::new("reload");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    // As a ConfigMap volume: the file is a symlink into a data directory that is swapped.
    let write = |dir: &str, targets: &[&str]| {
        let d = scratch.path(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("probe.yaml"),
            tcp_config(
                "n1",
                targets,
                target,
                &[receiver.url()],
                &scratch.path("buf"),
                "",
            ),
        )
        .unwrap();
        let tmp = scratch.path("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(dir, &tmp).unwrap();
        std::fs::rename(&tmp, scratch.path("..data")).unwrap();
    };
    write("v1", &["before"]);
    let config = scratch.path("probe.yaml");
    std::os::unix::fs::symlink("..data/probe.yaml", &config).unwrap();
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[]);
    wait_for(
        "samples of the first config",
        Duration::from_secs(20),
        || {
            receiver
                .keys()
                .keys()
                .any(|k| k.2 == "before")
                .then_some(())
        },
    )
    .await;
    write("v2", &["after"]);
    wait_for(
        "samples of the changed config",
        Duration::from_secs(30),
        || receiver.keys().keys().any(|k| k.2 == "after").then_some(()),
    )
    .await;
    // An invalid change is refused and the running configuration kept.
    let v3 = scratch.path("v3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::write(v3.join("probe.yaml"), "probe: not valid\n").unwrap();
    let tmp = scratch.path("..data_tmp");
    std::os::unix::fs::symlink("v3", &tmp).unwrap();
    std::fs::rename(&tmp, scratch.path("..data")).unwrap();
    let count_after = || receiver.keys().keys().filter(|k| k.2 == "after").count();
    let before = count_after();
    wait_for(
        "the invalid change to be refused",
        Duration::from_secs(20),
        || probe.log_text().contains("not usable").then_some(()),
    )
    .await;
    let now = count_after();
    wait_for("samples to continue", Duration::from_secs(10), || {
        (count_after() > now).then_some(())
    })
    .await;
    assert!(count_after() > before);
    assert!(probe.terminate().await.success());
    let before_after_change: Vec<_> = receiver
        .keys()
        .keys()
        .filter(|k| k.2 == "before")
        .map(|k| k.3.clone())
        .collect();
    let last_before = before_after_change.iter().max().unwrap().clone();
    let first_after = receiver
        .keys()
        .keys()
        .filter(|k| k.2 == "after")
        .map(|k| k.3.clone())
        .min()
        .unwrap();
    assert!(
        last_before < first_after,
        "the old target stopped when the new one started"
    );
}

#[tokio::test]
async fn sigterm_with_ingest_down_exits_and_keeps_the_samples() {
    let scratch = Scratch::new("sigterm");
    let (target, _t) = tcp_target().await;
    let dead = ReservedPort::new().unwrap();
    let url = dead.url();
    let config = scratch.path("probe.yaml");
    let buf = scratch.path("buf");
    std::fs::write(
        &config,
        tcp_config("n1", &["a", "b"], target, &[url], &buf, ""),
    )
    .unwrap();
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(probe.terminate().await.success(), "SIGTERM exits 0");
    let log = probe.log_text();
    assert!(
        log.contains("stopping with samples still buffered"),
        "{log}"
    );
    let b = Buffer::open(&buf, 4 << 20, std::sync::Arc::new(Stats::default())).unwrap();
    assert!(b.pending() >= 4, "{} samples kept", b.pending());
}

#[tokio::test]
async fn ingest_url_change_is_applied_without_disturbing_the_rounds() {
    let scratch = Scratch::new("reload-url");
    let (target, _t) = tcp_target().await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let config = scratch.path("probe.yaml");
    let write = |url: String| {
        let tmp = scratch.path("probe.yaml.tmp");
        std::fs::write(
            &tmp,
            tcp_config("n1", &["a"], target, &[url], &scratch.path("buf"), ""),
        )
        .unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    write(first.url());
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[]);
    wait_for(
        "samples at the first receiver",
        Duration::from_secs(20),
        || (first.keys().len() >= 2).then_some(()),
    )
    .await;
    write(second.url());
    wait_for(
        "samples at the second receiver",
        Duration::from_secs(30),
        || (second.keys().len() >= 3).then_some(()),
    )
    .await;
    assert!(probe.terminate().await.success());
    let mut all = first.keys();
    all.extend(second.keys());
    assert!(all.values().all(|n| *n == 1));
    assert_no_gaps(&all, INTERVAL, 0);
    // The schedule kept its phase: a restarted schedule would draw a new offset and put two
    // rounds closer than an interval.
    let times = &times_by_target(&all)["a"];
    for w in times.windows(2) {
        let gap = (w[1] - w[0]).to_std().unwrap();
        assert!(
            gap >= Duration::from_millis(900),
            "rounds {gap:?} apart: {times:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_delivers_a_batch_still_waiting_for_its_delay() {
    let scratch = Scratch::new("sigterm-flush");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    let config = scratch.path("probe.yaml");
    let buf = scratch.path("buf");
    // A batch leaves only after a minute: every sample is still buffered at SIGTERM.
    let text = tcp_config("n1", &["a", "b"], target, &[receiver.url()], &buf, "")
        .replace("batchMaxDelay: 300ms", "batchMaxDelay: 1m");
    std::fs::write(&config, text).unwrap();
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        receiver.state.lock().unwrap().requests.is_empty(),
        "sent before the batch was due"
    );
    assert!(probe.terminate().await.success());
    let log = probe.log_text();
    let keys = receiver.keys();
    assert!(
        keys.len() >= 4,
        "{} samples delivered; log:\n{log}",
        keys.len()
    );
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    assert!(
        log.contains("stopping with everything buffered delivered"),
        "{log}"
    );
    assert!(
        !log.contains("stopping with samples still buffered"),
        "{log}"
    );
    let b = Buffer::open(&buf, 4 << 20, std::sync::Arc::new(Stats::default())).unwrap();
    assert_eq!(b.pending(), 0);
}

/// fiber-probe sends the binary batch; an ingest from before it answers 415, and the probe
/// sends that URL JSON from then on: every sample arrives once, and only the first batch was
/// tried in binary.
#[tokio::test]
async fn an_ingest_that_refuses_the_binary_batch_is_sent_json() {
    let scratch = Scratch::new("json-only");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    receiver.state.lock().unwrap().json_only = true;
    let mut probe =
        ProbeProcess::start_tcp(&scratch, &["a", "b"], target, &[receiver.url()], "", &[]);
    wait_for("samples as JSON", Duration::from_secs(20), || {
        (receiver.keys().len() >= 8).then_some(())
    })
    .await;
    assert!(probe.terminate().await.success());
    let keys = receiver.keys();
    let dup: Vec<_> = keys.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dup.is_empty(), "samples sent more than once: {dup:?}");
    assert_no_gaps(&keys, INTERVAL, 0);
    let state = receiver.state.lock().unwrap();
    let binary = fiberstack_model::binary::MEDIA_TYPE;
    assert_eq!(
        state.content_types.first().map(String::as_str),
        Some(binary)
    );
    assert_eq!(
        state.content_types.iter().filter(|t| *t == binary).count(),
        1,
        "{:?}",
        state.content_types
    );
    assert!(state.content_types.len() >= 3, "{:?}", state.content_types);
    assert!(
        state.content_types[1..]
            .iter()
            .all(|t| t == "application/json"),
        "{:?}",
        state.content_types
    );
    drop(state);
    assert!(
        probe.log_text().contains("does not take the binary batch"),
        "{}",
        probe.log_text()
    );
}

/// The probe sends the binary batch to an ingest that takes it.
#[tokio::test]
async fn batches_are_sent_in_the_binary_encoding() {
    let scratch = Scratch::new("binary");
    let (target, _t) = tcp_target().await;
    let receiver = Receiver::start().await;
    let mut probe = ProbeProcess::start_tcp(&scratch, &["a"], target, &[receiver.url()], "", &[]);
    wait_for("samples", Duration::from_secs(20), || {
        (receiver.keys().len() >= 3).then_some(())
    })
    .await;
    assert!(probe.terminate().await.success());
    let state = receiver.state.lock().unwrap();
    assert!(!state.content_types.is_empty());
    assert!(
        state
            .content_types
            .iter()
            .all(|t| t == fiberstack_model::binary::MEDIA_TYPE),
        "{:?}",
        state.content_types
    );
}
