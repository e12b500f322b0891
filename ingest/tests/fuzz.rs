//! Fuzzing ingest over HTTP: thousands of malformed and edge-case requests, generated from a
//! seeded RNG out of the OpenAPI document ingest serves (its request examples and its
//! schemas' fields and bounds), against a real fiber-ingest on real Redis and PostgreSQL; a
//! third of the batches in fiber-probe's binary encoding.
//! Every answer is checked against the contract:
//!
//! - no 5xx, but a documented 503 for an outage (there is none here: Redis and the database
//!   answer, so any 503 is the input's fault, a bug);
//! - every refusal is the JSON error body, naming the problem;
//! - a 202 only when the batch's valid samples are in the stream, as many as it says, each of
//!   them storable (no NUL in any string, counts within PostgreSQL's `integer`, finite
//!   numbers) and valid; nothing appended for a refused request.
//!
//! `FUZZ_SEED` and `FUZZ_CASES` choose another run; a failure prints the seed and the case.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fiber_ingest::api::{AppState, MAX_BODY_BYTES, router};
use fiber_ingest::auth::Token;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, etl, unique_name};
use fiberstack_model::stream::{BATCH_FIELD, decode_batch, samples_stream};
use fiberstack_plumbing::postgres::DbConfig;
use redis::AsyncCommands;
use serde_json::{Map, Value, json};

const WRITER: &str = "fuzz-writer-token-0123456789";
const READER: &str = "fuzz-reader-token-0123456789";

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that break a field's type or bounds, or sit right on them.
fn nasty_value(rng: &mut Rng, bounds: Option<&Value>) -> Value {
    let mut choices: Vec<Value> = vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(-0.0),
        json!(2_147_483_647u64),
        json!(2_147_483_648u64),
        json!(4_294_967_296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-1e308),
        json!(f64::MIN_POSITIVE),
        json!(""),
        json!("\u{0}"),
        json!("a\u{0}b"),
        json!("\u{1}\u{1f}\u{7f}"),
        json!("x".repeat(70)),
        json!("x".repeat(2_100)),
        json!("é".repeat(1_025)),
        json!("💥".repeat(300)),
        json!("\u{feff}bom"),
        json!("2026-02-30T00:00:00Z"),
        json!("9999-12-31T23:59:59Z"),
        json!("1969-12-31T23:59:59Z"),
        json!("2026-11-30T10:00:60Z"),
        json!("icmp"),
        json!("ICMP"),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({ "\u{0}": "\u{0}" }),
        json!({ "k": "v\u{0}" }),
        json!({ "nested": { "deeper": ["\u{0}"] } }),
    ];
    if let Some(bounds) = bounds {
        for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
            if let Some(n) = bounds[key].as_f64() {
                choices.extend([json!(n), json!(n - 1.0), json!(n + 1.0), json!(n + 0.5)]);
                if n.fract() == 0.0 && n.abs() < 9e15 {
                    let n = n as i64;
                    choices.extend([json!(n - 1), json!(n + 1)]);
                }
            }
        }
        for key in ["maxLength", "minLength"] {
            if let Some(n) = bounds[key].as_u64() {
                let n = n as usize;
                choices.extend([
                    json!("y".repeat(n)),
                    json!("y".repeat(n + 1)),
                    json!("ÿ".repeat(n)),
                    json!(format!("{}\u{0}", "y".repeat(n.saturating_sub(1)))),
                ]);
            }
        }
        if let Some(n) = bounds["maxItems"].as_u64() {
            choices.push(Value::Array(vec![json!({}); n as usize + 1]));
        }
        if let Some(values) = bounds["enum"].as_array() {
            choices.extend(values.iter().cloned());
        }
    }
    rng.pick(&choices).clone()
}

/// The schema of `name` in the document, its properties resolved one `$ref` deep.
fn properties<'a>(doc: &'a Value, name: &str) -> &'a Map<String, Value> {
    doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("the document has no schema {name}"))
}

/// A field's bounds: its schema, or the first non-null branch of a `oneOf`/`anyOf`.
fn bounds_of(schema: &Value) -> &Value {
    for key in ["oneOf", "anyOf"] {
        if let Some(branches) = schema[key].as_array()
            && let Some(b) = branches.iter().find(|b| b["type"] != "null")
        {
            return b;
        }
    }
    schema
}

/// Mutates one place of a JSON request: a field set to a nasty value, removed, or added; the
/// samples array grown, emptied or replaced.
fn mutate_json(
    rng: &mut Rng,
    value: &mut Value,
    top: &Map<String, Value>,
    item: Option<&Map<String, Value>>,
) {
    let samples_len = value["samples"].as_array().map_or(0, Vec::len);
    let in_sample = item.is_some() && samples_len > 0 && rng.chance(75);
    let (target, schema) = if in_sample {
        let i = rng.below(samples_len);
        (&mut value["samples"][i], item.unwrap())
    } else {
        (&mut *value, top)
    };
    let Some(object) = target.as_object_mut() else {
        return;
    };
    let names: Vec<&String> = schema.keys().collect();
    let field = (*rng.pick(&names)).clone();
    match rng.below(10) {
        0 => {
            object.remove(&field);
        }
        1 => {
            let nasty = nasty_value(rng, None);
            object.insert(format!("unknown_{}", rng.below(3)), nasty);
        }
        2 if field == "samples" => {
            let len = samples_len.max(1);
            let grown: Vec<Value> = (0..rng.pick(&[0usize, 1, 5_001]).to_owned())
                .map(|i| value_or_null(object.get("samples"), i % len))
                .collect();
            object.insert(field, Value::Array(grown));
        }
        _ => {
            let nasty = nasty_value(rng, Some(bounds_of(&schema[&field])));
            object.insert(field, nasty);
        }
    }
}

fn value_or_null(samples: Option<&Value>, i: usize) -> Value {
    samples
        .and_then(|s| s.get(i))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Mutates the bytes: flips, cuts, inserts invalid UTF-8, a raw NUL, or a deep nesting.
fn mutate_bytes(rng: &mut Rng, body: &mut Vec<u8>) {
    if body.is_empty() {
        body.push(b'{');
    }
    match rng.below(7) {
        0 => {
            let i = rng.below(body.len());
            body[i] ^= 1 << rng.below(8);
        }
        1 => body.truncate(rng.below(body.len())),
        2 => {
            let i = rng.below(body.len());
            body.insert(i, *rng.pick(&[0xff, 0xc3, 0xed, 0x80, 0xfe]));
        }
        3 => {
            // Inside a string, most likely: a raw NUL or a raw control character.
            let i = rng.below(body.len());
            body.insert(i, *rng.pick(&[0x00, 0x01, 0x1f]));
        }
        4 => {
            let depth = *rng.pick(&[100usize, 200, 5_000]);
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let at = find(body, b"\"metadata\"").map_or(body.len(), |i| i);
            body.splice(at..at, format!("\"deep\":{nested},").into_bytes());
        }
        5 => {
            // An escaped lone surrogate: valid JSON text, not a valid string.
            let at = find(body, b"\"target\":\"").map_or(0, |i| i + 10);
            body.splice(at..at, b"\\ud800".iter().copied());
        }
        _ => {
            let at = find(body, b"\"target\":\"").map_or(0, |i| i + 10);
            body.splice(at..at, b"\\u0000".iter().copied());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// One request of the run.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// A POST to the write API (else a GET of the read API).
    write: bool,
}

impl Case {
    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect();
        format!(
            "{} {} {headers:?} ({} bytes) {body:?}",
            self.method,
            self.path,
            self.body.len()
        )
    }
}

/// What the generators start from: the document's request examples, made current.
struct Seeds {
    batch: Value,
    push: Value,
    batch_fields: Map<String, Value>,
    sample_fields: Map<String, Value>,
    push_fields: Map<String, Value>,
    read_params: Vec<(String, Vec<String>)>,
}

impl Seeds {
    fn from_document(doc: &Value, region: &str) -> Result<Self> {
        let example = |path: &str| -> Result<Value> {
            let v = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"];
            anyhow::ensure!(v.is_object(), "no request example for {path}");
            Ok(v.clone())
        };
        let now = chrono::Utc::now() - chrono::Duration::minutes(1);
        let mut batch = example("/api/v1/samples")?;
        batch["region"] = json!(region);
        for sample in batch["samples"].as_array_mut().context("example samples")? {
            sample["time"] = json!(now.to_rfc3339());
        }
        let mut push = example("/api/push")?;
        push["region"] = json!(region);
        push["timestamp"] = json!(now.to_rfc3339());
        let mut read_params = Vec::new();
        for path in [
            "/api/v1/metrics",
            "/api/v1/nodes",
            "/api/metrics",
            "/api/nodes",
        ] {
            let names = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .filter_map(|p| p["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            read_params.push((path.to_owned(), names));
        }
        Ok(Self {
            batch,
            push,
            batch_fields: properties(doc, "Batch").clone(),
            sample_fields: properties(doc, "Sample").clone(),
            push_fields: properties(doc, "PushSample").clone(),
            read_params,
        })
    }
}

fn json_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("content-type", b"application/json".to_vec()),
        ("authorization", format!("Bearer {WRITER}").into_bytes()),
    ]
}

/// Headers that break a rule of their own: type, charset, encoding, credentials.
fn nasty_headers(rng: &mut Rng, headers: &mut Vec<(&'static str, Vec<u8>)>, body: &mut Vec<u8>) {
    let content_types: [&[u8]; 10] = [
        b"text/plain",
        // A JSON body declared binary (the binary batch is /api/v1/samples' only).
        b"application/x-fiberstack-batch",
        b"application/xml",
        b"application/json; charset=latin1",
        b"application/json; charset=\"utf-8\"",
        b"APPLICATION/JSON",
        b"application/jsonx",
        b"multipart/form-data; boundary=x",
        b"application/json\xff",
        b"",
    ];
    match rng.below(6) {
        0 => headers[0].1 = rng.pick(&content_types).to_vec(),
        1 => {
            headers.remove(0);
        }
        2 => headers.push((
            "content-encoding",
            rng.pick(&[&b"br"[..], b"deflate", b"gzip, gzip", b"GZIP", b"x\xff"])
                .to_vec(),
        )),
        3 => {
            // Declared gzip, but is not (or is, truncated).
            headers.push(("content-encoding", b"gzip".to_vec()));
            if rng.chance(50) {
                let zipped = gzip(body);
                *body = zipped[..zipped.len() / 2].to_vec();
            }
        }
        4 => {
            headers.push(("content-encoding", b"gzip".to_vec()));
            *body = gzip(body);
        }
        _ => {
            headers[1].1 = rng
                .pick(&[
                    &b"Bearer"[..],
                    b"Basic Zm9vOmJhcg==",
                    b"bearer fuzz-writer-token-0123456789",
                    b"Bearer fuzz-reader-token-0123456789",
                    b"Bearer fuzz-writer-token-012345678\xff",
                    b"Bearer a.b.c",
                ])
                .to_vec()
        }
    }
}

fn write_case(rng: &mut Rng, seeds: &Seeds) -> Case {
    let push = rng.chance(20);
    let (mut value, top, item, path) = if push {
        (
            seeds.push.clone(),
            &seeds.push_fields,
            None,
            "/api/push".to_owned(),
        )
    } else {
        (
            seeds.batch.clone(),
            &seeds.batch_fields,
            Some(&seeds.sample_fields),
            "/api/v1/samples".to_owned(),
        )
    };
    for _ in 0..1 + rng.below(3) {
        mutate_json(rng, &mut value, top, item);
    }
    // A third of the batches that still parse go binary, as fiber-probe sends them (NaN
    // and other figures JSON cannot carry come from the mutations as JSON numbers' bytes
    // flipped in the binary body).
    let binary = (!push && rng.chance(33))
        .then(|| serde_json::from_value::<fiberstack_model::Batch>(value.clone()).ok())
        .flatten();
    let mut headers = json_headers();
    let mut body = match &binary {
        Some(batch) => {
            headers[0].1 = fiberstack_model::binary::MEDIA_TYPE.as_bytes().to_vec();
            fiberstack_model::binary::encode(batch)
        }
        None => serde_json::to_vec(&value).unwrap(),
    };
    if rng.chance(20) {
        mutate_bytes(rng, &mut body);
    }
    if rng.chance(15) {
        nasty_headers(rng, &mut headers, &mut body);
    }
    Case {
        method: "POST",
        path,
        headers,
        body,
        write: true,
    }
}

/// Bodies over the limit, compressed or once decompressed, and batches over the sample cap.
fn big_cases(seeds: &Seeds) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut padded = seeds.batch.clone();
    padded["agent_version"] = json!("v".repeat(MAX_BODY_BYTES));
    let oversized = serde_json::to_vec(&padded).unwrap();
    let mut zeros = seeds.batch.clone();
    zeros["samples"][0]["error"] = json!(" ".repeat(3 * MAX_BODY_BYTES));
    let bomb = gzip(&serde_json::to_vec(&zeros).unwrap());
    let mut many = seeds.batch.clone();
    let sample = many["samples"][0].clone();
    many["samples"] = Value::Array(vec![sample; 5_001]);
    for (body, gzipped) in [
        (oversized.clone(), false),
        (gzip(&oversized), true),
        (bomb, true),
        (serde_json::to_vec(&many).unwrap(), false),
        (Vec::new(), false),
        (b"null".to_vec(), false),
        (b"[]".to_vec(), false),
        (b"\"\\u0000\"".to_vec(), false),
        (vec![0u8; 64], false),
        (vec![0xffu8; 64], false),
    ] {
        let mut headers = json_headers();
        if gzipped {
            headers.push(("content-encoding", b"gzip".to_vec()));
        }
        for path in ["/api/v1/samples", "/api/push"] {
            cases.push(Case {
                method: "POST",
                path: path.to_owned(),
                headers: headers.clone(),
                body: body.clone(),
                write: true,
            });
        }
    }
    cases
}

/// Query values that break a parameter: NULs (`%00`), bytes that are not UTF-8, bad
/// percent-encoding, huge or negative numbers, impossible times, repeats.
fn read_case(rng: &mut Rng, seeds: &Seeds) -> Case {
    let (path, names) = rng.pick(&seeds.read_params).clone();
    let values = [
        "%00",
        "a%00b",
        "%ff",
        "%c3",
        "%zz",
        "%",
        "",
        "-1",
        "0",
        "2147483648",
        "99999999999999999999999",
        "1e308",
        "NaN",
        "raw",
        "hourly",
        "daily",
        "RAW",
        "gh-accra-1",
        "2026-11-30T10:00:00Z",
        "2026-02-30T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "-infinity",
        "1700000000",
        "now",
        "%27%3B%20drop%20table%20metrics%3B--",
        "%E2%80%AE",
    ];
    let mut pairs = Vec::new();
    for _ in 0..rng.below(5) {
        let name = if !names.is_empty() && rng.chance(85) {
            rng.pick(&names).clone()
        } else {
            rng.pick(&["x", "%00", "node_id%00", "limit", "start[]"])
                .to_string()
        };
        let value = if rng.chance(15) {
            "z".repeat(*rng.pick(&[300usize, 5_000]))
        } else {
            rng.pick(&values).to_string()
        };
        pairs.push(format!("{name}={value}"));
    }
    let query = pairs.join(if rng.chance(90) { "&" } else { ";" });
    let authorization = if rng.chance(90) {
        format!("Bearer {READER}").into_bytes()
    } else {
        rng.pick(&[
            &b"Bearer x"[..],
            b"",
            b"Bearer fuzz-writer-token-0123456789",
        ])
        .to_vec()
    };
    Case {
        method: "GET",
        path: format!("{path}?{query}"),
        headers: vec![("authorization", authorization)],
        body: Vec::new(),
        write: false,
    }
}

struct Target {
    url: String,
    region: String,
    client: reqwest::Client,
    redis: redis::aio::MultiplexedConnection,
}

impl Target {
    async fn stream_len(&mut self) -> Result<usize> {
        Ok(self.redis.xlen(samples_stream(&self.region)).await?)
    }

    /// The batch of the stream's newest entry.
    async fn last_batch(&mut self) -> Result<fiberstack_model::Batch> {
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .xrevrange_count(samples_stream(&self.region), "+", "-", 1)
            .await?;
        let entry = reply.ids.first().context("an empty stream")?;
        let bytes: Vec<u8> = entry.get(BATCH_FIELD).context("no batch field")?;
        Ok(decode_batch(&bytes)?)
    }

    async fn send(&self, case: &Case) -> Result<(u16, Option<String>, Vec<u8>)> {
        let method = reqwest::Method::from_bytes(case.method.as_bytes())?;
        let mut request = self
            .client
            .request(method, format!("{}{}", self.url, case.path));
        for (name, value) in &case.headers {
            // A value reqwest cannot send (a NUL, a newline) is not sent at all.
            if let Ok(value) = reqwest::header::HeaderValue::from_bytes(value) {
                request = request.header(*name, value);
            }
        }
        if case.method == "POST" {
            request = request.body(case.body.clone());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((status, content_type, response.bytes().await?.to_vec()))
    }
}

/// What is wrong with an answer to `case`, if anything; `grew` is how many entries the
/// stream gained meanwhile.
fn judge(
    case: &Case,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    grew: usize,
    last: Option<&fiberstack_model::Batch>,
) -> Option<String> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status >= 500 {
        return Some(format!(
            "{status}: a server error for an input (Redis and the database are up): {}",
            String::from_utf8_lossy(body)
        ));
    }
    if status >= 400 {
        if !content_type.is_some_and(|t| t.starts_with("application/json")) {
            return Some(format!(
                "{status} with Content-Type {content_type:?}, not the JSON error: {}",
                String::from_utf8_lossy(body)
            ));
        }
        let error = json.as_ref().and_then(|j| j["error"].as_str());
        if error.is_none_or(|e| e.trim().is_empty()) {
            return Some(format!(
                "{status} without an `error` naming the problem: {}",
                String::from_utf8_lossy(body)
            ));
        }
        if grew != 0 {
            return Some(format!("{status}, yet {grew} entries were appended"));
        }
        return None;
    }
    if !case.write {
        return (status != 200).then(|| format!("a read answered {status}"));
    }
    if status != 202 {
        return Some(format!("a write answered {status}"));
    }
    let Some(json) = json else {
        return Some("a 202 whose body is not JSON".to_owned());
    };
    // `/api/push` answers with the entry id; a batch with counts.
    let accepted = if case.path == "/api/push" {
        if json["queued"] != true || json["message_id"].as_str().is_none_or(str::is_empty) {
            return Some(format!("a push's 202 without its entry: {json}"));
        }
        1
    } else {
        let Some(accepted) = json["accepted"].as_u64() else {
            return Some(format!("a 202 without `accepted`: {json}"));
        };
        let rejected = json["rejected"].as_array().map_or(0, Vec::len);
        let sent: Option<usize> =
            decoded_body(case).and_then(|v| v["samples"].as_array().map(Vec::len));
        if let Some(sent) = sent
            && accepted as usize + rejected != sent
        {
            return Some(format!(
                "{sent} samples sent, {accepted} accepted + {rejected} rejected"
            ));
        }
        for r in json["rejected"].as_array().into_iter().flatten() {
            if r["error"].as_str().is_none_or(str::is_empty) || !r["index"].is_u64() {
                return Some(format!("a rejection that names nothing: {r}"));
            }
        }
        accepted as usize
    };
    let expected = usize::from(accepted > 0);
    if grew != expected {
        return Some(format!(
            "202 with {accepted} accepted, but the stream gained {grew} entries"
        ));
    }
    if accepted == 0 {
        return None;
    }
    let batch = last?;
    if batch.samples.len() != accepted {
        return Some(format!(
            "202 with {accepted} accepted, but the entry holds {} samples",
            batch.samples.len()
        ));
    }
    storable(batch).err()
}

/// The request body as JSON, gzip undone (a binary batch decoded and written as JSON).
fn decoded_body(case: &Case) -> Option<Value> {
    let gzipped = case
        .headers
        .iter()
        .any(|(k, v)| *k == "content-encoding" && v.eq_ignore_ascii_case(b"gzip"));
    let binary = case
        .headers
        .iter()
        .any(|(k, v)| *k == "content-type" && v == fiberstack_model::binary::MEDIA_TYPE.as_bytes());
    let body = if gzipped {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&case.body[..])
            .read_to_end(&mut out)
            .ok()?;
        out
    } else {
        case.body.clone()
    };
    if binary {
        serde_json::to_value(fiberstack_model::binary::decode(&body).ok()?).ok()
    } else {
        serde_json::from_slice(&body).ok()
    }
}

/// Whether PostgreSQL can hold every value of an appended batch as it is, checked here
/// independently of the model's validation, and the model's validation passes.
fn storable(batch: &fiberstack_model::Batch) -> Result<(), String> {
    let value = serde_json::to_value(batch).map_err(|e| e.to_string())?;
    fn walk(path: &str, v: &Value) -> Result<(), String> {
        match v {
            Value::String(s) if s.contains('\0') => Err(format!("{path}: a NUL was appended")),
            Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => {
                Err(format!("{path}: a non-finite number was appended"))
            }
            Value::Object(o) => {
                for (k, v) in o {
                    if k.contains('\0') {
                        return Err(format!("{path}: a key with a NUL was appended"));
                    }
                    walk(&format!("{path}.{k}"), v)?;
                }
                Ok(())
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(&format!("{path}[{i}]"), v)),
            _ => Ok(()),
        }
    }
    walk("batch", &value)?;
    for (i, s) in value["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for field in ["sent", "received", "status_code"] {
            if s[field]
                .as_i64()
                .is_some_and(|n| n > i64::from(i32::MAX) || n < 0)
            {
                return Err(format!(
                    "samples[{i}].{field} = {} does not fit PostgreSQL's integer",
                    s[field]
                ));
            }
        }
    }
    match batch.validate(chrono::Utc::now()) {
        Ok(rejected) if rejected.is_empty() => Ok(()),
        Ok(rejected) => Err(format!(
            "an appended sample fails validation: {:?}",
            rejected[0]
        )),
        Err(e) => Err(format!("an appended batch fails validation: {e}")),
    }
}

#[tokio::test]
async fn fuzzed_requests_get_documented_answers_and_append_only_valid_samples() -> Result<()> {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f1be);
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000);
    let env = LocalEnv::load()?;
    let db_url = env.fresh_postgres_database("fs_fuzz").await?;
    let outcome = run(&env, &db_url, seed, cases).await;
    env.drop_postgres_database(&db_url, &[]).await?;
    let (failures, counts) = outcome?;
    eprintln!(
        "fuzz: seed {seed}, {cases} generated cases; answers by body type and status: {counts:?}"
    );
    assert!(
        counts.get(&("binary", 202)).is_some_and(|n| *n > 0)
            && counts.get(&("binary", 400)).is_some_and(|n| *n > 0),
        "the binary batch was not both taken and refused: {counts:?}"
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} answers break the contract (the first of each kind):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    Ok(())
}

async fn run(
    env: &LocalEnv,
    db_url: &str,
    seed: u64,
    cases: usize,
) -> Result<(
    Vec<String>,
    std::collections::BTreeMap<(&'static str, u16), usize>,
)> {
    etl::migrate(db_url, None).await?;
    let region = unique_name("fuzz");
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;
    // No ETL reads this stream: no backlog limit by age, and room for every case.
    let writer = StreamWriter::new(redis, &region, 1_000_000).with_max_age(Duration::ZERO);
    let state = AppState::new(
        &region,
        Token::new(WRITER).unwrap(),
        RateLimiter::new(1e6, 1_000_000),
        writer,
    )
    .with_reader_token(Token::new(READER).unwrap())
    .with_read_rate(1_000_000)
    .with_database(DbConfig::new(db_url).connect_read_only().await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let service = router(Arc::new(state)).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });

    let mut target = Target {
        url: format!("http://{addr}"),
        region: region.clone(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        redis: env.redis().await?,
    };
    let doc: Value = target
        .client
        .get(format!("{}/api/openapi.json", target.url))
        .send()
        .await?
        .json()
        .await?;
    let seeds = Seeds::from_document(&doc, &region)?;

    // The unmutated examples are accepted whole: the generators start from valid requests.
    let mut rng = Rng(seed);
    let mut all: Vec<Case> = ["/api/v1/samples", "/api/push"]
        .into_iter()
        .map(|path| Case {
            method: "POST",
            path: path.to_owned(),
            headers: json_headers(),
            body: serde_json::to_vec(if path == "/api/push" {
                &seeds.push
            } else {
                &seeds.batch
            })
            .unwrap(),
            write: true,
        })
        .collect();
    all.extend(big_cases(&seeds));
    for _ in 0..cases {
        all.push(if rng.chance(75) {
            write_case(&mut rng, &seeds)
        } else {
            read_case(&mut rng, &seeds)
        });
    }

    let mut failures: std::collections::BTreeMap<String, String> = Default::default();
    let mut counts = std::collections::BTreeMap::new();
    for (i, case) in all.iter().enumerate() {
        let before = target.stream_len().await?;
        let (status, content_type, body) = target
            .send(case)
            .await
            .with_context(|| format!("case {i}: {}", case.describe()))?;
        let binary = case.headers.iter().any(|(k, v)| {
            *k == "content-type" && v == fiberstack_model::binary::MEDIA_TYPE.as_bytes()
        });
        *counts
            .entry((if binary { "binary" } else { "other" }, status))
            .or_insert(0) += 1;

        let grew = target.stream_len().await?.saturating_sub(before);
        let last = if grew > 0 {
            Some(target.last_batch().await?)
        } else {
            None
        };
        if i < 2 && status != 202 {
            anyhow::bail!(
                "the document's example for {} is refused ({status}): {}",
                case.path,
                String::from_utf8_lossy(&body)
            );
        }
        if let Some(problem) = judge(
            case,
            status,
            content_type.as_deref(),
            &body,
            grew,
            last.as_ref(),
        ) {
            // One example of each kind of failure: its path, status and the start of the problem.
            let kind: String = format!(
                "{} {status} {problem}",
                case.path.split('?').next().unwrap()
            )
            .chars()
            .take(60)
            .collect();
            failures
                .entry(kind)
                .or_insert_with(|| format!("case {i}: {}\n  -> {problem}", case.describe()));
        }
    }
    Ok((failures.into_values().collect(), counts))
}
