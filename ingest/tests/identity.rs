//! A probe pod writes only as itself: its projected ServiceAccount token, minted by the real
//! kube-apiserver of the local environment through the TokenRequest API and bound to a pod
//! on a real node, is verified by fiber-ingest with a TokenReview against that API server.
//! Accepted for its own node and FiberProbe (202, in the stream); refused for another node or
//! probe (403, nothing stored); refused when expired, meant for another audience, or revoked
//! with its pod (401 with the RFC 6750 challenge). The pod's region is its
//! `fiberstack.io/region` label: its batches of that region are taken by any region's ingest
//! (the probe's fallback) and stored under it, those of another region by none; the static
//! token writes its own region only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::{DEFAULT_AUDIENCE, REGION_LABEL, Token, TokenReviewer};
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, TestNamespace, env_value, unique_name, wait_for};
use fiberstack_model::stream::{BATCH_FIELD, decode_batch, samples_stream};
use fiberstack_model::{Batch, CheckKind, Sample};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use redis::AsyncCommands;
use serde_json::{Value, json};

const REGION_TOKEN: &str = "identity-test-token-0123456789";
/// The FiberProbe the test pod stands for; its pod is named as the DaemonSet names its pods.
const PROBE: &str = "edge";
const NODE: &str = "gh-accra-1";
const OTHER_NODE: &str = "ng-lagos-1";

struct Ingest {
    url: String,
    region: String,
}

/// A fiber-ingest as `main.rs` wires it with `--token-audience`, on a fresh stream.
async fn ingest(client: &Client, cache: Duration) -> Result<Ingest> {
    ingest_of(client, cache, &unique_name("identity-test"), REGION_TOKEN).await
}

/// [`ingest`] for `region`, whose static token is `token`.
async fn ingest_of(client: &Client, cache: Duration, region: &str, token: &str) -> Result<Ingest> {
    let env = LocalEnv::load()?;
    let region = region.to_owned();
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;
    let state = AppState::new(
        &region,
        Token::new(token).unwrap(),
        RateLimiter::new(1000.0, 1000),
        StreamWriter::new(redis, &region, 1_000),
    )
    .with_token_review(TokenReviewer::new(client.clone(), DEFAULT_AUDIENCE, cache));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
    Ok(Ingest {
        url: format!("http://{addr}"),
        region,
    })
}

impl Ingest {
    fn batch(&self, namespace: &str, probe: &str, node: &str) -> Batch {
        Batch {
            probe: format!("{namespace}/{probe}"),
            region: self.region.clone(),
            country: "GH".into(),
            node: node.into(),
            agent_version: "0.1.0".into(),
            samples: vec![Sample {
                latency_ms: Some(1.5),
                address: "127.0.0.1:5432".into(),
                ..Sample::new(chrono::Utc::now(), "db", CheckKind::Tcp, true)
            }],
        }
    }

    /// Status, `WWW-Authenticate` and body of a POST of `batch` with `token`.
    async fn post(&self, token: &str, batch: &Batch) -> Result<(u16, Option<String>, Value)> {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/samples", self.url))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(serde_json::to_vec(batch)?)
            .send()
            .await?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        Ok((status, challenge, response.json().await?))
    }

    async fn stored(&self) -> Result<usize> {
        let mut redis = LocalEnv::load()?.redis().await?;
        Ok(redis.xlen(samples_stream(&self.region)).await?)
    }

    /// The batches in this region's stream, oldest first.
    async fn batches(&self) -> Result<Vec<Batch>> {
        let mut redis = LocalEnv::load()?.redis().await?;
        let reply: redis::streams::StreamRangeReply =
            redis.xrange_all(samples_stream(&self.region)).await?;
        reply
            .ids
            .iter()
            .map(|entry| {
                let bytes: Vec<u8> = entry.get(BATCH_FIELD).context("entry without a batch")?;
                Ok(decode_batch(&bytes)?)
            })
            .collect()
    }
}

/// A ServiceAccount and a pod of the probe's DaemonSet (by name), placed on `NODE`: the
/// kubelet there runs it (the pause image), and its uid is what tokens are bound to. Its
/// region label is `region`, as the operator's DaemonSet sets it (none: no label).
async fn probe_pod(client: &Client, ns: &str, region: Option<&str>) -> Result<Pod> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("fiberstack-probe".into()),
            ..Default::default()
        },
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &account).await?;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("fiberstack-probe-{PROBE}-x7k2q")),
            labels: region.map(|r| [(REGION_LABEL.to_owned(), r.to_owned())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            service_account_name: Some("fiberstack-probe".into()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "pause".into(),
                image: Some(env_value("FIBERSTACK_PAUSE_IMAGE")?),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?)
}

/// A token of the pod's ServiceAccount from the TokenRequest API, as the kubelet gets one
/// for a projected `serviceAccountToken` volume: bound to the pod, for `audience`.
async fn token_request(client: &Client, pod: &Pod, audience: &str) -> Result<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let answer: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource(
            "token",
            "fiberstack-probe",
            &PostParams::default(),
            &request,
        )
        .await?;
    Ok(answer.status.context("TokenRequest without status")?.token)
}

/// A token as the API server would mint it for `pod` (its claims and its signing key, the
/// environment's `sa.key`), but valid from `iat` for `lifetime` seconds: how to hold an
/// expired token without waiting the API server's 10-minute minimum out.
async fn signed_token(client: &Client, pod: &Pod, iat: i64, lifetime: i64) -> Result<String> {
    let node: Node = Api::<Node>::all(client.clone()).get(NODE).await?;
    let account: ServiceAccount = Api::<ServiceAccount>::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap(),
    )
    .get("fiberstack-probe")
    .await?;
    let claims = json!({
        "aud": [DEFAULT_AUDIENCE],
        "exp": iat + lifetime,
        "iat": iat,
        "nbf": iat,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{}:fiberstack-probe", pod.metadata.namespace.as_deref().unwrap()),
        "kubernetes.io": {
            "namespace": pod.metadata.namespace,
            "node": { "name": NODE, "uid": node.metadata.uid },
            "pod": { "name": pod.metadata.name, "uid": pod.metadata.uid },
            "serviceaccount": { "name": "fiberstack-probe", "uid": account.metadata.uid },
        },
    });
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let pem = std::fs::read_to_string(fiberstack_e2e::ca_certificate().with_file_name("sa.key"))?;
    let der = base64::engine::general_purpose::STANDARD.decode(
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )?;
    let key = ring::rsa::KeyPair::from_pkcs8(&der).map_err(|e| anyhow::anyhow!("sa.key: {e}"))?;
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

#[tokio::test]
async fn a_probe_pods_token_writes_only_as_its_own_node_and_probe() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, "identity").await?;
    let s = ingest(&client, Duration::from_secs(60)).await?;
    let pod = probe_pod(&client, &ns.name, Some(&s.region)).await?;
    let token = token_request(&client, &pod, DEFAULT_AUDIENCE).await?;

    let (status, _, body) = s.post(&token, &s.batch(&ns.name, PROBE, NODE)).await?;
    assert_eq!((status, &body["accepted"]), (202, &json!(1)), "{body}");
    assert_eq!(s.stored().await?, 1);

    // Another node, from the same pod: refused, naming both nodes.
    let (status, _, body) = s
        .post(&token, &s.batch(&ns.name, PROBE, OTHER_NODE))
        .await?;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("node:"), "{error}");
    assert!(
        error.contains(OTHER_NODE) && error.contains(NODE),
        "{error}"
    );

    // Another FiberProbe, or the same one of another namespace: refused, naming the probe.
    for probe in [format!("{}/other", ns.name), format!("fiberstack/{PROBE}")] {
        let (namespace, name) = probe.split_once('/').unwrap();
        let (status, _, body) = s.post(&token, &s.batch(namespace, name, NODE)).await?;
        assert_eq!(status, 403, "{probe}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("probe:") && error.contains(&probe),
            "{error}"
        );
    }
    assert_eq!(
        s.stored().await?,
        1,
        "a refused batch left something in the stream"
    );

    // The region's static token (probes outside the cluster) still writes any node.
    let (status, _, body) = s
        .post(REGION_TOKEN, &s.batch(&ns.name, PROBE, OTHER_NODE))
        .await?;
    assert_eq!(status, 202, "{body}");
    ns.delete().await
}

#[tokio::test]
async fn expired_foreign_and_revoked_tokens_are_refused() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, "identity").await?;
    // Nothing cached: each POST asks the API server, so a revocation shows at once.
    let s = ingest(&client, Duration::ZERO).await?;
    let pod = probe_pod(&client, &ns.name, Some(&s.region)).await?;
    let batch = s.batch(&ns.name, PROBE, NODE);
    let refused = |(status, challenge, body): (u16, Option<String>, Value)| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"fiberstack\", error=\"invalid_token\"")
        );
        body["error"].as_str().unwrap().to_owned()
    };

    // A token minted for the API server's own audience, or anyone else's, is not ours.
    for audience in ["https://kubernetes.default.svc.cluster.local", "grafana"] {
        let foreign = token_request(&client, &pod, audience).await?;
        let error = refused(s.post(&foreign, &batch).await?);
        assert!(error.starts_with("ServiceAccount token refused"), "{error}");
    }

    // Signed with the API server's key and the pod's claims: taken while valid, refused once
    // expired. (The valid one shows that the expired one fails for its time alone.)
    let now = chrono::Utc::now().timestamp();
    let (status, _, body) = s
        .post(&signed_token(&client, &pod, now - 60, 3600).await?, &batch)
        .await?;
    assert_eq!(status, 202, "{body}");
    let expired = signed_token(&client, &pod, now - 3600, 600).await?;
    let error = refused(s.post(&expired, &batch).await?);
    assert!(error.contains("expired"), "{error}");

    // Garbage shaped like a JWT, and the region token with one character changed.
    refused(s.post("eyJh.eyJi.c2ln", &batch).await?);
    refused(s.post(&REGION_TOKEN.replace('0', "1"), &batch).await?);

    // The pod goes: its token dies with it.
    let token = token_request(&client, &pod, DEFAULT_AUDIENCE).await?;
    assert_eq!(s.post(&token, &batch).await?.0, 202);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.delete(
        pod.metadata.name.as_deref().unwrap(),
        &DeleteParams::default().grace_period(0),
    )
    .await?;
    wait_for(
        "the pod to be gone",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            Ok(
                match pods.get_opt(pod.metadata.name.as_deref().unwrap()).await? {
                    None => Ok(()),
                    Some(_) => Err("still there".to_owned()),
                },
            )
        },
    )
    .await?;
    // The API server itself remembers a token it vouched for for 10 s
    // (`--authentication-token-cache-ttl` does not apply to ServiceAccount tokens): wait for
    // it to learn of the pod's end, asking it directly, then ask through ingest. (A fresh
    // reviewer, which reads the pod anew, refuses at once, the pod being gone: the API
    // server's own refusal is the one that says "invalidated".)
    let reviewer = TokenReviewer::new(client.clone(), DEFAULT_AUDIENCE, Duration::ZERO);
    wait_for(
        "the API server to refuse the deleted pod's token",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            Ok(match reviewer.review(&token).await {
                Err(fiber_ingest::auth::ReviewError::Refused(e)) if e.contains("invalidated") => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let error = refused(s.post(&token, &batch).await?);
    assert!(error.contains("invalidated"), "{error}");
    assert_eq!(
        s.stored().await?,
        2,
        "only the two accepted batches are stored"
    );
    ns.delete().await
}

#[tokio::test]
async fn a_pod_writes_its_own_region_through_any_regions_ingest_and_no_other_region() -> Result<()>
{
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, "identity").await?;
    // Two regions, each with its own ingest and static token; the pod is of region A.
    let token_a = "identity-test-token-region-a-0123";
    let token_b = "identity-test-token-region-b-0123";
    let a = ingest_of(
        &client,
        Duration::from_secs(60),
        &unique_name("identity-a"),
        token_a,
    )
    .await?;
    let b = ingest_of(
        &client,
        Duration::from_secs(60),
        &unique_name("identity-b"),
        token_b,
    )
    .await?;
    let pod = probe_pod(&client, &ns.name, Some(&a.region)).await?;
    let token = token_request(&client, &pod, DEFAULT_AUDIENCE).await?;

    // A's batch, sent to B's ingest (A's is down, say) with the pod's token: taken, and
    // stored under region A in B's stream, from which B's ETL writes it.
    let batch_a = a.batch(&ns.name, PROBE, NODE);
    let (status, _, body) = b.post(&token, &batch_a).await?;
    assert_eq!((status, &body["accepted"]), (202, &json!(1)), "{body}");
    let stored = b.batches().await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].region.as_str(), stored[0].node.as_str()),
        (a.region.as_str(), NODE)
    );
    assert_eq!(stored[0].samples, batch_a.samples);
    // And to its own region's ingest, of course.
    assert_eq!(a.post(&token, &batch_a).await?.0, 202);

    // B's batch with the pod of A: refused by either ingest, naming both regions.
    let batch_b = b.batch(&ns.name, PROBE, NODE);
    for ingest in [&a, &b] {
        let (status, _, body) = ingest.post(&token, &batch_b).await?;
        assert_eq!(status, 403, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("region:") && error.contains(&a.region) && error.contains(&b.region),
            "{error}"
        );
    }

    // The static token stays in its own region: B's token with A's batch is refused by B,
    // naming both; A's token is not B's at all.
    let (status, _, body) = b.post(token_b, &batch_a).await?;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("region:") && error.contains(&a.region) && error.contains(&b.region),
        "{error}"
    );
    assert_eq!(b.post(token_a, &batch_a).await?.0, 401);
    assert_eq!(a.post(token_a, &batch_a).await?.0, 202);
    assert_eq!(
        b.stored().await?,
        1,
        "a refused batch left something in B's stream"
    );
    assert_eq!(a.stored().await?, 2);
    ns.delete().await
}

#[tokio::test]
async fn a_pod_without_a_region_label_writes_no_region() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, "identity").await?;
    let s = ingest(&client, Duration::from_secs(60)).await?;
    let pod = probe_pod(&client, &ns.name, None).await?;
    let token = token_request(&client, &pod, DEFAULT_AUDIENCE).await?;
    let (status, _, body) = s.post(&token, &s.batch(&ns.name, PROBE, NODE)).await?;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("region:") && error.contains(REGION_LABEL) && error.contains(&s.region),
        "{error}"
    );
    assert_eq!(s.stored().await?, 0);
    ns.delete().await
}
