//! Who may write and read, and the RFC 6750 challenge of a refusal.
//!
//! Two kinds of writer credential: the region's static token (probes outside the cluster,
//! seed 001's federation) and, in the cluster, a probe pod's projected ServiceAccount token,
//! which the API server vouches for through a TokenReview ([`TokenReviewer`]). The second
//! binds the writer to its pod, hence to its node and its FiberProbe: [`Identity::may_write`]
//! refuses a batch that claims another. The pod's region is its `fiberstack.io/region` label
//! (the operator's DaemonSet sets it), read once per pod: a pod proves its region, so any
//! region's ingest may take its batches (seed 001's fallback), while the static token is
//! good for its own region only.
//!
//! Static tokens given as files are re-read when the files change ([`Token::watch`]): a
//! rotation needs no restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A static bearer credential: the region's writer token, or the reader token. It may hold
/// several tokens, all valid at once, so that one can be rotated without downtime: give
/// `new,old`, move the clients to `new`, then drop `old`. Clones share the tokens: a
/// [`Token::replace`] (or a [`Token::watch`] of its file) is seen by every clone.
#[derive(Clone)]
pub struct Token(Arc<RwLock<Vec<Vec<u8>>>>);

impl Token {
    /// A token must be long enough to resist guessing.
    pub const MIN_LEN: usize = 16;

    /// One token, or several separated by commas or newlines (a Secret's value may end in a
    /// newline; blanks around each are dropped).
    pub fn new(tokens: &str) -> Result<Self, String> {
        Ok(Self(Arc::new(RwLock::new(Self::parse(tokens)?))))
    }

    /// No token yet: matches nothing until a [`Token::replace`] (a reader token whose
    /// optional Secret is not made yet).
    pub fn none() -> Self {
        Self(Arc::new(RwLock::new(Vec::new())))
    }

    /// Whether it holds no token (matches nothing).
    pub fn is_empty(&self) -> bool {
        self.0.read().expect("token lock").is_empty()
    }

    /// Drops every token, for every clone: whether there were any.
    pub fn clear(&self) -> bool {
        let mut current = self.0.write().expect("token lock");
        let had = !current.is_empty();
        current.clear();
        had
    }

    /// Reads `path` (one token or several, as [`Token::new`]).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Takes `tokens` in place of the current ones, for every clone: whether they changed.
    /// Invalid `tokens` leave the current ones.
    pub fn replace(&self, tokens: &str) -> Result<bool, String> {
        let list = Self::parse(tokens)?;
        let mut current = self.0.write().expect("token lock");
        if *current == list {
            return Ok(false);
        }
        *current = list;
        Ok(true)
    }

    /// Re-reads `path` every `every` for as long as the server runs and takes its tokens
    /// when they change: a rotation (`new,old`, then `new`) needs no restart. A file that
    /// is unreadable or holds no valid token, or holds a token of `disjoint_from` (the other
    /// role's credential), leaves the current tokens, with a warning once per change of the
    /// reason; so does a missing file, unless `missing` says [`WhenMissing::Close`]. As the
    /// certificate (`tls.rs`), the file is polled: a Secret volume is updated by swapping a
    /// symlink, which inotify on the file never sees.
    pub async fn watch(
        self,
        path: PathBuf,
        every: Duration,
        what: &'static str,
        disjoint_from: Option<Token>,
        missing: WhenMissing,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            let outcome = match std::fs::read_to_string(&path) {
                // Unchanged since the last look: nothing to parse.
                Ok(text) if last_read.as_ref() == Some(&text) => Ok(false),
                Ok(text) => {
                    let outcome = self.take_unless_shared(&text, disjoint_from.as_ref());
                    last_read = Some(text);
                    outcome
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && missing == WhenMissing::Close =>
                {
                    last_read = None;
                    if self.clear() {
                        last_error = None;
                        tracing::info!(path = %path.display(), "{what} file removed; its token(s) are no longer valid");
                    }
                    Ok(false)
                }
                Err(e) => {
                    last_read = None;
                    Err(format!("cannot read {}: {e}", path.display()))
                }
            };
            match outcome {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(path = %path.display(), "{what} changed; the new token(s) are taken");
                }
                Ok(false) => last_error = None,
                Err(message) => {
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(path = %path.display(), error = %message, "{what} file is not usable; the previous token(s) stay valid");
                        last_error = Some(message);
                    }
                }
            }
        }
    }

    fn take_unless_shared(&self, text: &str, other: Option<&Token>) -> Result<bool, String> {
        let list = Self::parse(text)?;
        if let Some(other) = other
            && other.overlaps(&Self(Arc::new(RwLock::new(list))))
        {
            return Err(
                "a token in it is also the other role's token (reader and writer tokens must differ)"
                    .to_owned(),
            );
        }
        self.replace(text)
    }

    fn parse(tokens: &str) -> Result<Vec<Vec<u8>>, String> {
        let list: Vec<&str> = tokens
            .split([',', '\n'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if list.is_empty() {
            return Err(format!(
                "no token given; at least {} characters are required",
                Self::MIN_LEN
            ));
        }
        for (i, token) in list.iter().enumerate() {
            if token.len() < Self::MIN_LEN {
                let which = if list.len() == 1 {
                    "the token".to_owned()
                } else {
                    format!("token {} of {}", i + 1, list.len())
                };
                return Err(format!(
                    "{which} is {} characters long, at least {} are required",
                    token.len(),
                    Self::MIN_LEN
                ));
            }
        }
        Ok(list.iter().map(|t| t.as_bytes().to_vec()).collect())
    }

    /// Checks an `Authorization` header value: `Bearer <token>`, the scheme in any case
    /// (RFC 9110 §11.1). The comparison takes the same time wherever the first differing byte
    /// is.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Refused> {
        if self.matches(bearer(authorization)?) {
            Ok(())
        } else {
            Err(Refused::Invalid)
        }
    }

    /// Whether `presented` is one of the tokens, in constant time: each is compared in
    /// full, whichever matches.
    pub fn matches(&self, presented: &str) -> bool {
        self.0
            .read()
            .expect("token lock")
            .iter()
            .fold(subtle::Choice::from(0), |any, t| {
                any | presented.as_bytes().ct_eq(t)
            })
            .into()
    }

    /// Whether a token of `other` is also one of these (a reader token that writes, say).
    pub fn overlaps(&self, other: &Token) -> bool {
        // Copied out first: `other` may be a clone of `self` (one lock, never taken twice).
        let theirs = other.0.read().expect("token lock").clone();
        let ours = self.0.read().expect("token lock");
        theirs.iter().any(|t| ours.contains(t))
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        self.check(authorization).is_ok()
    }
}

/// What a [`Token::watch`] does when the file is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenMissing {
    /// Keep the tokens last read: the region's writer tokens, whose Secret the operator
    /// keeps, so a missing file is a mishap, and dropping the tokens would stop every probe.
    Keep,
    /// Drop them: an optional Secret (the reader token's) that was deleted, which is how a
    /// user closes what it opened.
    Close,
}

/// The bearer token of an `Authorization` header value: `Bearer <token>`, the scheme in any
/// case (RFC 9110 §11.1).
pub fn bearer(authorization: Option<&str>) -> Result<&str, Refused> {
    authorization
        .and_then(|h| h.trim_start().split_once([' ', '\t']))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or(Refused::Missing)
}

/// Why a request's credentials were refused, as RFC 6750 §3 tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No bearer token at all (no `Authorization`, or another scheme).
    Missing,
    /// A bearer token that is not the region's.
    Invalid,
    /// A valid token of the other role: a writer's on the read API, or the reader's on the
    /// write API (403).
    InsufficientScope,
}

/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "fiberstack";

impl Refused {
    /// The `WWW-Authenticate` value of the 401 answer: the challenge, with
    /// `error="invalid_token"` when a token was presented and is wrong.
    pub fn challenge(self) -> String {
        match self {
            Self::Missing => format!("Bearer realm=\"{REALM}\""),
            Self::Invalid => format!("Bearer realm=\"{REALM}\", error=\"invalid_token\""),
            Self::InsufficientScope => {
                format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\"")
            }
        }
    }
}

/// The audience of the probes' projected ServiceAccount tokens: a token minted for the API
/// server (or for anything else) is not taken, and one of ours is useless elsewhere.
pub const DEFAULT_AUDIENCE: &str = "fiberstack-ingest";

/// The name prefix of a FiberProbe's DaemonSet, as the operator renders it
/// (`fiberstack-probe-<FiberProbe name>`); its pods are named `<DaemonSet>-<5 characters>`.
pub const PROBE_DAEMONSET_PREFIX: &str = "fiberstack-probe-";

/// The label of a probe pod naming its FiberRegion, as the operator's DaemonSet sets it.
pub const REGION_LABEL: &str = "fiberstack.io/region";

/// Who sent a write, as its credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The region's static token: a probe outside the cluster, bound to no node.
    Region,
    /// A probe pod in the cluster, by its ServiceAccount token.
    Pod(PodIdentity),
}

/// What the API server says about a probe pod's token: the pod it is bound to and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    /// The pod's uid (`authentication.kubernetes.io/pod-uid`): its region is read once per
    /// uid, and a pod of the same name made later is another pod.
    pub uid: String,
    /// The node the pod runs on (`authentication.kubernetes.io/node-name`).
    pub node: String,
    /// The pod's FiberRegion: its [`REGION_LABEL`] label; none when it has none.
    pub region: Option<String>,
}

impl Identity {
    /// Whether this writer may send samples of `region` as `node` for the FiberProbe
    /// `probe` (`namespace/name`) to the ingest of region `served`. The region token may
    /// send anything of its own region (`served`) and nothing of another; a pod only its own
    /// region's (to any region's ingest: its label proves the region, which lets a probe
    /// fall back to another region's ingest), only for its own node, and only for the
    /// FiberProbe whose DaemonSet made it. The refusal names the field, what was sent and
    /// what the credential allows.
    pub fn may_write(
        &self,
        served: &str,
        region: &str,
        node: &str,
        probe: &str,
    ) -> Result<(), String> {
        let pod = match self {
            Identity::Region if region == served => return Ok(()),
            Identity::Region => {
                return Err(format!(
                    "region: this ingest service serves region {served:?} and its static token writes only that region; a batch of region {region:?} goes to that region's ingest (or comes with a probe pod's ServiceAccount token of region {region:?})"
                ));
            }
            Identity::Pod(pod) => pod,
        };
        match &pod.region {
            Some(own) if own == region => {}
            Some(own) => {
                return Err(format!(
                    "region: the batch says region {region:?}, but its token belongs to pod {}/{} of region {own:?}; a probe writes only its own region",
                    pod.namespace, pod.pod
                ));
            }
            None => {
                return Err(format!(
                    "region: the batch says region {region:?}, but its token belongs to pod {}/{}, which has no {REGION_LABEL} label (not a pod of a FiberProbe's DaemonSet); a probe writes only its own region",
                    pod.namespace, pod.pod
                ));
            }
        }
        if node != pod.node {
            return Err(format!(
                "node: the batch says node {node:?}, but its token belongs to pod {}/{} on node {:?}; a probe writes only as its own node",
                pod.namespace, pod.pod, pod.node
            ));
        }
        let (namespace, name) = probe.split_once('/').unwrap_or(("", probe));
        if namespace != pod.namespace || !pod.is_made_by(&format!("{PROBE_DAEMONSET_PREFIX}{name}"))
        {
            return Err(format!(
                "probe: the batch says probe {probe:?}, but its token belongs to pod {}/{}, which is not a pod of that FiberProbe's DaemonSet ({}/{PROBE_DAEMONSET_PREFIX}{name}); a probe writes only as itself",
                pod.namespace, pod.pod, namespace
            ));
        }
        Ok(())
    }
}

impl PodIdentity {
    /// Whether the pod's name is one its DaemonSet `daemonset` gives: the API server's
    /// `generateName` of `<daemonset>-`, cut to 58 characters, plus 5 random ones.
    fn is_made_by(&self, daemonset: &str) -> bool {
        const MAX_BASE: usize = 63 - 5;
        let base = format!("{daemonset}-");
        let base = &base[..base.len().min(MAX_BASE)];
        self.pod.strip_prefix(base).is_some_and(|suffix| {
            suffix.len() == 5
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    }

    /// Reads a TokenReview's answer: the pod of an authenticated, pod-bound token of our
    /// audience, or why not.
    fn from_review(review: &TokenReview, audience: &str) -> Result<Self, ReviewError> {
        let status = review.status.clone().unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Refused(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the API server does not authenticate it".to_owned()),
            ));
        }
        // An API server without audience support answers with none; ours must be named.
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == audience)
        {
            return Err(ReviewError::Refused(format!(
                "the token is not meant for audience {audience:?}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(ReviewError::Refused(format!(
                "{username:?} is not a ServiceAccount"
            )));
        };
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let (Some(pod), Some(uid), Some(node)) = (
            one("authentication.kubernetes.io/pod-name"),
            one("authentication.kubernetes.io/pod-uid"),
            one("authentication.kubernetes.io/node-name"),
        ) else {
            return Err(ReviewError::Refused(
                "the token is not bound to a pod on a node (mount it as a projected serviceAccountToken volume)".to_owned(),
            ));
        };
        Ok(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod,
            uid,
            node,
            region: None,
        })
    }
}

/// Why a ServiceAccount token was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server does not vouch for it (expired, revoked, another audience, not bound
    /// to a pod): 401.
    #[error("ServiceAccount token refused: {0}")]
    Refused(String),
    /// The API server could not be asked: 503, the probe retries.
    #[error("cannot verify the ServiceAccount token: the Kubernetes API does not answer: {0}")]
    Unavailable(String),
}

/// Verifies probe pods' ServiceAccount tokens with a TokenReview, and remembers a token the
/// API server vouched for for a short while (a probe sends a batch every few seconds; the
/// API server should not see each). Only the SHA-256 of a token is kept.
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (PodIdentity, Instant)>>,
    /// Each pod's region by uid: a pod's labels are read once in its life.
    regions: Mutex<HashMap<String, Option<String>>>,
}

/// Entries at which the cache is swept of expired ones: about a probe pod each.
const CACHE_SWEEP_AT: usize = 10_000;

impl TokenReviewer {
    /// `ttl`: how long a positive answer is trusted. A token revoked meanwhile (its pod
    /// deleted) is still taken for at most that long; zero asks the API server every time.
    pub fn new(client: kube::Client, audience: &str, ttl: Duration) -> Self {
        Self {
            client,
            audience: audience.to_owned(),
            ttl,
            cache: Mutex::new(HashMap::new()),
            regions: Mutex::new(HashMap::new()),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Whether `token` is worth a TokenReview: a JWT has three base64url parts. Anything
    /// else is refused without asking the API server.
    pub fn looks_like_jwt(token: &str) -> bool {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
            })
    }

    /// The pod `token` belongs to, from the cache or the API server.
    pub async fn review(&self, token: &str) -> Result<PodIdentity, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((pod, until)) = self.cache.lock().expect("cache lock").get(&key)
            && *until > now
        {
            return Ok(pod.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let mut pod = PodIdentity::from_review(&answer, &self.audience)?;
        pod.region = self.region_of(&pod).await?;
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_SWEEP_AT {
                cache.retain(|_, (_, until)| *until > now);
            }
            cache.insert(key, (pod.clone(), now + self.ttl));
        }
        Ok(pod)
    }
}

impl TokenReviewer {
    /// The pod's [`REGION_LABEL`], from the cache by uid or from the pod itself (needs `get`
    /// on `pods` in the probes' namespaces). A pod that is gone, or replaced by another of
    /// its name, is refused: its token is about to be.
    async fn region_of(&self, pod: &PodIdentity) -> Result<Option<String>, ReviewError> {
        if let Some(region) = self
            .regions
            .lock()
            .expect("region cache lock")
            .get(&pod.uid)
        {
            return Ok(region.clone());
        }
        let found = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace)
            .get_opt(&pod.pod)
            .await
            .map_err(|e| {
                ReviewError::Unavailable(format!(
                    "reading pod {}/{} for its region (ingest needs `get` on pods): {e}",
                    pod.namespace, pod.pod
                ))
            })?;
        let Some(found) = found.filter(|p| p.metadata.uid.as_deref() == Some(&pod.uid)) else {
            return Err(ReviewError::Refused(format!(
                "the token's pod {}/{} (uid {}) no longer exists",
                pod.namespace, pod.pod, pod.uid
            )));
        };
        let region = found
            .metadata
            .labels
            .and_then(|mut labels| labels.remove(REGION_LABEL));
        let mut regions = self.regions.lock().expect("region cache lock");
        // Uids of pods long gone pile up; forgetting them all costs one GET per live pod.
        if regions.len() >= CACHE_SWEEP_AT {
            regions.clear();
        }
        regions.insert(pod.uid.clone(), region.clone());
        Ok(region)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_the_bearer_token() {
        let t = Token::new("0123456789abcdef").unwrap();
        assert!(t.admits(Some("Bearer 0123456789abcdef")));
        assert!(!t.admits(Some("Bearer 0123456789abcdeF")));
        assert!(!t.admits(Some("Bearer 0123456789abcde")));
        assert!(!t.admits(Some("0123456789abcdef")));
        assert!(!t.admits(Some("Basic 0123456789abcdef")));
        assert!(!t.admits(None));
        assert_eq!(format!("{t:?}"), "Token(***)");
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let t = Token::new("0123456789abcdef").unwrap();
        for header in [
            "bearer 0123456789abcdef",
            "BEARER 0123456789abcdef",
            "BeArEr   0123456789abcdef ",
        ] {
            assert_eq!(t.check(Some(header)), Ok(()), "{header}");
        }
        assert_eq!(
            t.check(Some("Bearerx 0123456789abcdef")),
            Err(Refused::Missing)
        );
    }

    #[test]
    fn refusals_say_whether_a_token_was_presented() {
        let t = Token::new("0123456789abcdef").unwrap();
        for missing in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer  "),
            Some("Basic abc"),
        ] {
            assert_eq!(t.check(missing), Err(Refused::Missing), "{missing:?}");
        }
        assert_eq!(t.check(Some("bearer wrong")), Err(Refused::Invalid));
        assert_eq!(Refused::Missing.challenge(), "Bearer realm=\"fiberstack\"");
        assert_eq!(
            Refused::Invalid.challenge(),
            "Bearer realm=\"fiberstack\", error=\"invalid_token\""
        );
    }

    fn pod(name: &str, node: &str) -> Identity {
        Identity::Pod(PodIdentity {
            namespace: "fiberstack".into(),
            service_account: "default".into(),
            pod: name.into(),
            uid: "0000-1111".into(),
            node: node.into(),
            region: Some("ghana".into()),
        })
    }

    #[test]
    fn a_pod_writes_only_as_its_node_and_its_daemonsets_probe() {
        let p = pod("fiberstack-probe-accra-edge-x7k2q", "gh-accra-1");
        let write = |node, probe| p.may_write("ghana", "ghana", node, probe);
        assert_eq!(write("gh-accra-1", "fiberstack/accra-edge"), Ok(()));
        let e = write("ng-lagos-1", "fiberstack/accra-edge").unwrap_err();
        assert!(
            e.starts_with("node:") && e.contains("\"ng-lagos-1\""),
            "{e}"
        );
        for other in [
            "fiberstack/accra",            // a prefix of the pod's probe
            "fiberstack/accra-edge-x7k2q", // the pod's own name
            "other/accra-edge",            // another namespace
            "accra-edge",                  // no namespace
        ] {
            let e = write("gh-accra-1", other).unwrap_err();
            assert!(e.starts_with("probe:"), "{other}: {e}");
        }
        // The probe `accra` may not claim pods of `accra-edge`, nor the other way round.
        let short = pod("fiberstack-probe-accra-edge12", "gh-accra-1");
        assert!(
            short
                .may_write("ghana", "ghana", "gh-accra-1", "fiberstack/accra")
                .is_err()
        );
    }

    #[test]
    fn a_pod_writes_only_its_own_region_to_any_regions_ingest() {
        let p = pod("fiberstack-probe-accra-edge-x7k2q", "gh-accra-1");
        let (node, probe) = ("gh-accra-1", "fiberstack/accra-edge");
        // Its own region, to its own ingest or (falling back) to another region's.
        assert_eq!(p.may_write("ghana", "ghana", node, probe), Ok(()));
        assert_eq!(p.may_write("nigeria", "ghana", node, probe), Ok(()));
        // Another region's batch, wherever it is sent: refused, naming both regions.
        for served in ["ghana", "nigeria"] {
            let e = p.may_write(served, "nigeria", node, probe).unwrap_err();
            assert!(
                e.starts_with("region:") && e.contains("\"nigeria\"") && e.contains("\"ghana\""),
                "{e}"
            );
        }
        // A pod without the region label is of no region.
        let Identity::Pod(mut unlabelled) = p else {
            unreachable!()
        };
        unlabelled.region = None;
        let e = Identity::Pod(unlabelled)
            .may_write("ghana", "ghana", node, probe)
            .unwrap_err();
        assert!(e.starts_with("region:") && e.contains(REGION_LABEL), "{e}");
    }

    #[test]
    fn the_static_token_writes_only_its_own_region() {
        assert_eq!(
            Identity::Region.may_write("ghana", "ghana", "any", "any/thing"),
            Ok(())
        );
        let e = Identity::Region
            .may_write("ghana", "nigeria", "any", "any/thing")
            .unwrap_err();
        assert!(
            e.starts_with("region:") && e.contains("\"ghana\"") && e.contains("\"nigeria\""),
            "{e}"
        );
    }

    #[test]
    fn long_daemonset_names_are_cut_as_the_api_server_cuts_them() {
        let name = "a".repeat(50);
        // `fiberstack-probe-` + 50 + `-` is 68 characters; generateName keeps 58.
        let base = format!("fiberstack-probe-{name}-")[..58].to_owned();
        let p = pod(&format!("{base}b2c4d"), "n");
        assert_eq!(
            p.may_write("ghana", "ghana", "n", &format!("fiberstack/{name}")),
            Ok(())
        );
        assert!(
            p.may_write("ghana", "ghana", "n", "fiberstack/aaaa")
                .is_err()
        );
    }

    #[test]
    fn only_jwt_shaped_tokens_are_reviewed() {
        assert!(TokenReviewer::looks_like_jwt("eyJh.eyJi.c2ln"));
        for not in [
            "",
            "abc",
            "a.b",
            "a..c",
            "a.b.c.d",
            "a b.c.d",
            "0123456789abcdef",
        ] {
            assert!(!TokenReviewer::looks_like_jwt(not), "{not}");
        }
    }

    #[test]
    fn a_review_is_read_for_the_pod_and_its_node() {
        use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
        let review = |authenticated, audiences: &[&str], extra: &[(&str, &str)]| TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:fiberstack:default".into()),
                    extra: Some(
                        extra
                            .iter()
                            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                            .collect(),
                    ),
                    ..Default::default()
                }),
                error: None,
            }),
            ..Default::default()
        };
        let bound = [
            ("authentication.kubernetes.io/pod-name", "p-abcde"),
            ("authentication.kubernetes.io/node-name", "gh-accra-1"),
            ("authentication.kubernetes.io/pod-uid", "0000-1111"),
        ];
        let ok =
            PodIdentity::from_review(&review(true, &[DEFAULT_AUDIENCE], &bound), DEFAULT_AUDIENCE)
                .unwrap();
        assert_eq!(
            (
                ok.namespace.as_str(),
                ok.pod.as_str(),
                ok.uid.as_str(),
                ok.node.as_str()
            ),
            ("fiberstack", "p-abcde", "0000-1111", "gh-accra-1")
        );
        let refused = |r: TokenReview| {
            PodIdentity::from_review(&r, DEFAULT_AUDIENCE)
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused(review(false, &[DEFAULT_AUDIENCE], &bound)).contains("does not authenticate")
        );
        assert!(refused(review(true, &[], &bound)).contains("audience"));
        assert!(
            refused(review(true, &[DEFAULT_AUDIENCE], &bound[..1]))
                .contains("not bound to a pod on a node")
        );
    }

    #[test]
    fn two_tokens_are_valid_at_once_during_a_rotation() {
        let t = Token::new("new-token-0123456789, old-token-0123456789\n").unwrap();
        assert!(t.matches("new-token-0123456789"));
        assert!(t.matches("old-token-0123456789"));
        assert!(!t.matches("new-token-0123456789, old-token-0123456789"));
        assert!(!t.matches("new-token-012345678"));
        let e = Token::new("new-token-0123456789,short").unwrap_err();
        assert!(e.starts_with("token 2 of 2 is 5 characters long"), "{e}");
        assert!(
            Token::new(" ,\n")
                .unwrap_err()
                .starts_with("no token given")
        );
    }

    #[test]
    fn a_replacement_is_seen_by_every_clone_and_a_bad_one_changes_nothing() {
        let t = Token::new("old-token-0123456789").unwrap();
        let clone = t.clone();
        assert_eq!(
            t.replace("new-token-0123456789,old-token-0123456789"),
            Ok(true)
        );
        assert!(clone.matches("new-token-0123456789") && clone.matches("old-token-0123456789"));
        assert_eq!(
            t.replace("new-token-0123456789\nold-token-0123456789\n"),
            Ok(false)
        );
        assert!(t.replace("short").is_err());
        assert!(clone.matches("old-token-0123456789"));
        assert_eq!(t.replace("new-token-0123456789"), Ok(true));
        assert!(!clone.matches("old-token-0123456789"));
        let reader = Token::new("reader-token-0123456789").unwrap();
        assert!(
            t.take_unless_shared(
                "a-new-token-0123456789,reader-token-0123456789",
                Some(&reader)
            )
            .is_err()
        );
        assert!(t.matches("new-token-0123456789"));
        assert!(t.overlaps(&clone));
    }

    #[test]
    fn short_tokens_are_refused() {
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
    }
}
