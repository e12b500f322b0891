//! Bearer-token authentication of probes, and the RFC 6750 challenge of a refusal.

use subtle::ConstantTimeEq;

/// The region's probe token.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    /// A token must be long enough to resist guessing.
    pub const MIN_LEN: usize = 16;

    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "the token is {} characters long, at least {} are required",
                token.len(),
                Self::MIN_LEN
            ));
        }
        Ok(Self(token.as_bytes().to_vec()))
    }

    /// Checks an `Authorization` header value: `Bearer <token>`, the scheme in any case
    /// (RFC 9110 §11.1). The comparison takes the same time wherever the first differing byte
    /// is.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Refused> {
        let presented = authorization
            .and_then(|h| h.trim_start().split_once([' ', '\t']))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(Refused::Missing)?;
        if bool::from(presented.as_bytes().ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(Refused::Invalid)
        }
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        self.check(authorization).is_ok()
    }
}

/// Why a request's credentials were refused, as RFC 6750 §3 tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No bearer token at all (no `Authorization`, or another scheme).
    Missing,
    /// A bearer token that is not the region's.
    Invalid,
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
        }
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

    #[test]
    fn short_tokens_are_refused() {
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
    }
}
