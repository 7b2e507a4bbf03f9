//! axum's extractors with their rejections answered as problem+json, like every
//! other error (axum's own answer them as plain text).

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Path`, rejecting a path it cannot decode (bad percent-encoding
/// such as `/v1/tasks/%ff`, which is not UTF-8) with a problem+json 400 that names
/// the path parameter.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => {
                let field = match &rejection {
                    PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                        ErrorKind::InvalidUtf8InPathParam { key }
                        | ErrorKind::ParseErrorAtKey { key, .. } => Some(key.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                let mut err = ApiError::new(
                    rejection.status(),
                    "invalid-path",
                    "Invalid path",
                    rejection.body_text(),
                );
                err.field = field;
                Err(err)
            }
        }
    }
}
