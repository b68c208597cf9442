//! The reconcilers' and the batch runner's error, with a category for
//! metrics.

use std::time::Duration;

use cloudkon_core::aws::AwsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    #[error("{0}")]
    Other(String),
    /// A finalizer's cleanup failed (reported in the object's
    /// `CleanupFailed` condition); retried after `retry_in`.
    #[error("cleanup failed (retrying in {retry_in:?}): {message}")]
    CleanupFailed { message: String, retry_in: Duration },
}

impl Error {
    /// Unwraps a finalizer's error: a failed cleanup keeps its retry delay;
    /// anything else becomes `Other`, prefixed with `what`.
    pub fn from_finalizer(what: &str, e: kube::runtime::finalizer::Error<Error>) -> Error {
        match e {
            kube::runtime::finalizer::Error::CleanupFailed(e @ Error::CleanupFailed { .. }) => e,
            e => Error::Other(format!("{what}: {e}")),
        }
    }
}

impl Error {
    /// What failed, for metrics: `kube`, `aws`, `build`, `cleanup`, `other`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Aws(_) => "aws",
            Error::Build(_) => "build",
            Error::CleanupFailed { .. } => "cleanup",
            Error::Other(_) => "other",
        }
    }

    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}
