//! Who may write and read, and the RFC 6750 challenge of a refusal.
//!
//! Two kinds of writer credential: the region's static token (probes outside the cluster,
//! seed 001's federation) and, in the cluster, a probe pod's projected ServiceAccount token,
//! which the API server vouches for through a TokenReview ([`TokenReviewer`]). The second
//! binds the writer to its pod, hence to its node and its FiberProbe: [`Identity::may_write`]
//! refuses a batch that claims another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A static bearer credential: the region's writer token, or the reader token. It may hold
/// several tokens, all valid at once, so that one can be rotated without downtime: give
/// `new,old`, move the clients to `new`, then drop `old`.
#[derive(Clone)]
pub struct Token(Vec<Vec<u8>>);

impl Token {
    /// A token must be long enough to resist guessing.
    pub const MIN_LEN: usize = 16;

    /// One token, or several separated by commas or newlines (a Secret's value may end in a
    /// newline; blanks around each are dropped).
    pub fn new(tokens: &str) -> Result<Self, String> {
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
        Ok(Self(list.iter().map(|t| t.as_bytes().to_vec()).collect()))
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
            .iter()
            .fold(subtle::Choice::from(0), |any, t| {
                any | presented.as_bytes().ct_eq(t)
            })
            .into()
    }

    /// Whether a token of `other` is also one of these (a reader token that writes, say).
    pub fn overlaps(&self, other: &Token) -> bool {
        other.0.iter().any(|t| self.0.contains(t))
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        self.check(authorization).is_ok()
    }
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
    /// The node the pod runs on (`authentication.kubernetes.io/node-name`).
    pub node: String,
}

impl Identity {
    /// Whether this writer may send samples as `node` for the FiberProbe `probe`
    /// (`namespace/name`): the region token may send anything of its region; a pod only for
    /// its own node, and only for the FiberProbe whose DaemonSet made it. The refusal names
    /// the field, what was sent and what the token allows.
    pub fn may_write(&self, node: &str, probe: &str) -> Result<(), String> {
        let Identity::Pod(pod) = self else {
            return Ok(());
        };
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
        let (Some(pod), Some(node)) = (
            one("authentication.kubernetes.io/pod-name"),
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
            node,
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
        let pod = PodIdentity::from_review(&answer, &self.audience)?;
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
            node: node.into(),
        })
    }

    #[test]
    fn a_pod_writes_only_as_its_node_and_its_daemonsets_probe() {
        let p = pod("fiberstack-probe-accra-edge-x7k2q", "gh-accra-1");
        assert_eq!(p.may_write("gh-accra-1", "fiberstack/accra-edge"), Ok(()));
        let e = p
            .may_write("ng-lagos-1", "fiberstack/accra-edge")
            .unwrap_err();
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
            let e = p.may_write("gh-accra-1", other).unwrap_err();
            assert!(e.starts_with("probe:"), "{other}: {e}");
        }
        // The probe `accra` may not claim pods of `accra-edge`, nor the other way round.
        let short = pod("fiberstack-probe-accra-edge12", "gh-accra-1");
        assert!(short.may_write("gh-accra-1", "fiberstack/accra").is_err());
        assert_eq!(Identity::Region.may_write("any", "any/thing"), Ok(()));
    }

    #[test]
    fn long_daemonset_names_are_cut_as_the_api_server_cuts_them() {
        let name = "a".repeat(50);
        // `fiberstack-probe-` + 50 + `-` is 68 characters; generateName keeps 58.
        let base = format!("fiberstack-probe-{name}-")[..58].to_owned();
        let p = pod(&format!("{base}b2c4d"), "n");
        assert_eq!(p.may_write("n", &format!("fiberstack/{name}")), Ok(()));
        assert!(p.may_write("n", "fiberstack/aaaa").is_err());
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
        ];
        let ok =
            PodIdentity::from_review(&review(true, &[DEFAULT_AUDIENCE], &bound), DEFAULT_AUDIENCE)
                .unwrap();
        assert_eq!(
            (ok.namespace.as_str(), ok.pod.as_str(), ok.node.as_str()),
            ("fiberstack", "p-abcde", "gh-accra-1")
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
    fn short_tokens_are_refused() {
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
    }
}
