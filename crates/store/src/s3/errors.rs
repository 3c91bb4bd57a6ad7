//! Turning `object_store` errors into [`StoreError`]s that name the bucket and endpoint, tell rejected
//! credentials from missing permissions, and never carry a credential or a raw response body.

use std::io;

use super::requests::Shared;
use crate::StoreError;

/// `text` with every credential replaced by `***`.
pub(super) fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

/// The S3 error code (`<Code>NoSuchBucket</Code>`) somewhere in an error's text.
pub(super) fn s3_error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text.get(start..)?.find("</Code>")?;
    text.get(start..start + len)
}

/// Codes that mean the credentials themselves were rejected (as opposed to a missing permission).
pub(super) const BAD_CREDENTIAL_CODES: [&str; 5] = [
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
];

/// The HTTP-level failure kind somewhere in an error's source chain.
fn http_error_kind(error: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            return Some(http.kind());
        }
        source = e.source();
    }
    None
}

/// The innermost cause of an error (e.g. "Connection refused (os error 111)").
fn root_cause_text(error: &object_store::Error) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// An error and its sources, joined, as one line.
pub(super) fn error_chain_text(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

impl Shared {
    pub(super) fn bucket_missing(&self) -> StoreError {
        StoreError::BucketMissing {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    pub(super) fn task_failed(&self, error: &tokio::task::JoinError) -> StoreError {
        StoreError::Protocol {
            endpoint: self.endpoint.clone(),
            reason: format!("an S3 request task failed: {error}"),
        }
    }

    /// Translates an `object_store` error of `operation` into a [`StoreError`] naming the bucket and
    /// endpoint, without credentials and without the raw response body.
    pub(super) fn error(&self, operation: &'static str, error: object_store::Error) -> StoreError {
        let text = scrub(&error_chain_text(&error), &self.secrets);
        let code = s3_error_code(&text).map(str::to_string);
        if code.as_deref() == Some("NoSuchBucket") {
            return self.bucket_missing();
        }
        let denied = matches!(
            error,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || code
            .as_deref()
            .is_some_and(|c| c == "AccessDenied" || BAD_CREDENTIAL_CODES.contains(&c));
        if denied {
            let reason = match code.as_deref() {
                Some(c) if BAD_CREDENTIAL_CODES.contains(&c) => {
                    format!("{c}: the access key id or secret key is wrong")
                }
                Some(c) => c.to_string(),
                None => "HTTP 403".to_string(),
            };
            let reason = if self.anonymous {
                format!(
                    "{reason} (the request was unsigned: no credentials were given; set \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or access_key_id= and \
                     secret_access_key=)"
                )
            } else {
                reason
            };
            return StoreError::AccessDenied {
                bucket: self.bucket.clone(),
                endpoint: self.endpoint.clone(),
                operation,
                reason,
            };
        }
        match http_error_kind(&error) {
            Some(object_store::client::HttpErrorKind::Timeout) => StoreError::Timeout {
                endpoint: self.endpoint.clone(),
                operation: "answer",
                timeout_ms: self.timeout.as_millis(),
            },
            Some(
                object_store::client::HttpErrorKind::Connect
                | object_store::client::HttpErrorKind::Request
                | object_store::client::HttpErrorKind::Interrupted,
            ) => StoreError::Connection {
                endpoint: format!("{} (bucket {})", self.endpoint, self.bucket),
                source: io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    scrub(&root_cause_text(&error), &self.secrets),
                ),
            },
            _ => StoreError::Server {
                message: match code {
                    Some(code) => format!(
                        "S3 {operation} in bucket {} at {} failed: {code}",
                        self.bucket, self.endpoint
                    ),
                    None => format!(
                        "S3 {operation} in bucket {} at {} failed: {text}",
                        self.bucket, self.endpoint
                    ),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_found_and_secrets_scrubbed() {
        let body =
            "Server returned non-2xx status code: 403: <Error><Code>SignatureDoesNotMatch</Code>\
                    <AWSAccessKeyId>AKID</AWSAccessKeyId></Error>";
        assert_eq!(s3_error_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(s3_error_code("no code"), None);
        let scrubbed = scrub(body, &["AKID".to_string()]);
        assert!(!scrubbed.contains("AKID"));
    }
}
