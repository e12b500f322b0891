//! Bearer-token authentication of probes.

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

    /// Whether an `Authorization` header value carries this token. The comparison takes the
    /// same time wherever the first differing byte is.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        bool::from(presented.trim().as_bytes().ct_eq(&self.0))
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
    fn short_tokens_are_refused() {
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
    }
}
