//! Why a reconcile failed; `kind()` is the stable label of the error metric.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("generating the probe token: {0}")]
    Token(#[source] std::io::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api_refused",
            Error::Kube(_) => "api_unreachable",
            Error::Token(_) => "token",
            Error::MissingField(_) => "missing_field",
        }
    }
}
