//! One SDK call within the request's deadline, and what its errors mean.

use super::*;

/// Runs one SDK call within the request's deadline and keeps its error's AWS code beside what
/// it means as an [`UpstreamFailure`] (the SDK has already retried what it retries).
pub(super) async fn call<T, E, R>(
    deadline: Deadline,
    fut: impl Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, AwsFailure>
where
    E: ProvideErrorMetadata + std::error::Error,
    R: std::fmt::Debug,
{
    match tokio::time::timeout(deadline.remaining(), fut).await {
        Err(_) => Err(AwsFailure {
            code: None,
            failure: UpstreamFailure::Unavailable {
                detail: "the request's time budget was used up".into(),
            },
        }),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(classify(&err)),
    }
}

/// An SDK failure with the AWS error code kept, so callers can accept "not found".
pub(super) struct AwsFailure {
    pub(super) code: Option<String>,
    pub(super) failure: UpstreamFailure,
}

impl AwsFailure {
    pub(super) fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

pub(super) fn classify<E: ProvideErrorMetadata + std::error::Error, R: std::fmt::Debug>(
    err: &SdkError<E, R>,
) -> AwsFailure {
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().map(str::to_owned);
            let detail = format!(
                "{}: {}",
                e.code().unwrap_or("error"),
                e.message()
                    .unwrap_or("")
                    .chars()
                    .take(160)
                    .collect::<String>()
            );
            let failure = match code.as_deref() {
                Some(
                    "ThrottlingException" | "TooManyRequestsException" | "LimitExceededException",
                ) => UpstreamFailure::Throttled { retry_after: None },
                Some(
                    "ServiceUnavailableException"
                    | "InternalFailureException"
                    | "InternalException",
                ) => UpstreamFailure::Unavailable { detail },
                _ => UpstreamFailure::Refused {
                    status: 400,
                    detail,
                },
            };
            AwsFailure { code, failure }
        }
        SdkError::TimeoutError(_) => AwsFailure {
            code: None,
            failure: UpstreamFailure::Unavailable {
                detail: "timed out".into(),
            },
        },
        SdkError::DispatchFailure(_) => AwsFailure {
            code: None,
            failure: UpstreamFailure::Unavailable {
                detail: "connection failed".into(),
            },
        },
        SdkError::ResponseError(_) => AwsFailure {
            code: None,
            failure: UpstreamFailure::Unavailable {
                detail: "unreadable answer".into(),
            },
        },
        _ => AwsFailure {
            code: None,
            failure: UpstreamFailure::Unavailable {
                detail: "the request could not be sent".into(),
            },
        },
    }
}

pub(super) const NOT_FOUND: &str = "ResourceNotFoundException";

/// Success, or "it is already gone", which is what removal wanted.
pub(super) fn ok_if_gone<T>(result: Result<T, AwsFailure>) -> Result<(), RegistryError> {
    match result {
        Ok(_) => Ok(()),
        Err(f) if f.is(NOT_FOUND) => Ok(()),
        Err(f) => Err(f.into()),
    }
}

/// What an AWS error code means to the flow: a resource not found is gone, one that exists
/// already or changed is the entry changed meanwhile; the rest as classified.
impl From<AwsFailure> for RegistryError {
    fn from(f: AwsFailure) -> RegistryError {
        let detail = || f.failure.to_string();
        match f.code.as_deref() {
            Some(NOT_FOUND) => RegistryError::Gone(detail()),
            Some(
                "ResourceAlreadyExistsException" | "ConflictException" | "VersionConflictException",
            ) => RegistryError::Changed(detail()),
            _ => RegistryError::Upstream(f.failure),
        }
    }
}

pub(super) fn same_pem(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

pub(super) fn cert_id(arn: &str) -> Option<&str> {
    arn.split_once(":cert/").map(|(_, id)| id)
}
/// DeleteThing refused because a principal is still attached.
pub(super) fn still_attached(f: &AwsFailure) -> bool {
    match &f.failure {
        UpstreamFailure::Refused { detail, .. } => detail.contains("attached"),
        _ => false,
    }
}
