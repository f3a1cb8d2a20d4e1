//! Bearer-token authentication of the write RPCs.
//!
//! The token is compared in constant time (so response timing reveals nothing about it) and never
//! logged: `AuthToken`'s `Debug` prints a placeholder.

use std::fmt;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct AuthToken(String);

impl AuthToken {
    /// `None` for an empty token: an empty `AUTH_TOKEN` would let an empty bearer in.
    pub fn new(token: String) -> Option<Self> {
        (!token.is_empty()).then_some(Self(token))
    }

    /// `Ok` when the request carries `authorization: Bearer <this token>`.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        if bool::from(presented.as_bytes().ct_eq(self.0.as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = AuthToken::new("s3cret".into()).unwrap();
        assert!(token.check(&request(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let status = token.check(&request(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(AuthToken::new(String::new()).is_none());
        assert_eq!(format!("{token:?}"), "AuthToken(<redacted>)");
    }
}
