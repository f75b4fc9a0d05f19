//! The worker credential: a shared token (`LEAKSCAN_WORKER_TOKEN`) that
//! every call to the coordinator carries as `authorization: Bearer TOKEN`.
//! The coordinator compares it in constant time and answers any other call
//! `UNAUTHENTICATED` before it reaches a handler (docs/ARCHITECTURE.md,
//! "Worker credential").

use std::sync::Arc;

use subtle::ConstantTimeEq as _;
use tonic::{metadata::MetadataValue, service::Interceptor, Request, Status};

/// Shortest token the coordinator and the workers accept.
pub const MIN_TOKEN_LEN: usize = 16;

/// A new random token: 32 bytes, hex-encoded.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the worker token must be at least {MIN_TOKEN_LEN} characters")]
    TooShort,
    #[error("the worker token may hold only visible ASCII characters")]
    NotPrintable,
}

fn check(token: &str) -> Result<(), TokenError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort);
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(TokenError::NotPrintable);
    }
    Ok(())
}

/// Client side: adds the credential to every call.
#[derive(Clone)]
pub struct AttachToken {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl AttachToken {
    pub fn new(token: &str) -> Result<Self, TokenError> {
        check(token)?;
        let mut header: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| TokenError::NotPrintable)?;
        header.set_sensitive(true);
        Ok(AttachToken { header })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// Server side: lets through only calls that carry the token.
#[derive(Clone)]
pub struct RequireToken {
    expected: Arc<[u8]>,
}

impl RequireToken {
    pub fn new(token: &str) -> Result<Self, TokenError> {
        check(token)?;
        Ok(RequireToken {
            expected: format!("Bearer {token}").into_bytes().into(),
        })
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map_or(&[][..], MetadataValue::as_bytes);
        // Constant time in the content; only the length may differ.
        if bool::from(given.ct_eq(&self.expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("a valid worker token is required"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(interceptor: &mut RequireToken, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        interceptor
            .call(request)
            .map(|_| ())
            .map_err(|status| status.code())
    }

    #[test]
    fn only_the_exact_token_passes() {
        let token = generate_token();
        let mut server = RequireToken::new(&token).unwrap();
        assert_eq!(call(&mut server, Some(&format!("Bearer {token}"))), Ok(()));
        let unauthenticated = Err(tonic::Code::Unauthenticated);
        assert_eq!(call(&mut server, None), unauthenticated);
        assert_eq!(call(&mut server, Some(&token)), unauthenticated);
        assert_eq!(
            call(&mut server, Some(&format!("Bearer {token}x"))),
            unauthenticated
        );
        assert_eq!(
            call(&mut server, Some(&format!("Bearer {}", &token[1..]))),
            unauthenticated
        );
        assert_eq!(
            call(&mut server, Some(&format!("Bearer {}", generate_token()))),
            unauthenticated
        );
    }

    #[test]
    fn the_client_attaches_what_the_server_expects() {
        let token = generate_token();
        let request = AttachToken::new(&token)
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        assert!(RequireToken::new(&token).unwrap().call(request).is_ok());
        let other = AttachToken::new(&generate_token())
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        assert!(RequireToken::new(&token).unwrap().call(other).is_err());
    }

    #[test]
    fn weak_tokens_are_refused() {
        assert_eq!(RequireToken::new("short").err(), Some(TokenError::TooShort));
        assert_eq!(
            AttachToken::new("sixteen chars ok").err(),
            Some(TokenError::NotPrintable)
        );
        assert_eq!(generate_token().len(), 64);
        assert_ne!(generate_token(), generate_token());
    }
}
