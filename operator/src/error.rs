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
    /// What failed in a reconcile of `object` (`Kind namespace/name`): the
    /// error keeps its own category.
    #[error("{object}: {source}")]
    Of {
        object: String,
        #[source]
        source: Box<Error>,
    },
    /// A finalizer's cleanup failed (reported in the object's
    /// `CleanupFailed` condition); retried after `retry_in`.
    #[error("cleanup failed (retrying in {retry_in:?}): {message}")]
    CleanupFailed { message: String, retry_in: Duration },
    /// A finalizer waits for something to finish first (a WorkerPool for
    /// its batches); looked at again after `retry_in`. Not a failure.
    #[error("deletion waits (looking again in {retry_in:?}): {message}")]
    DeletionWaits { message: String, retry_in: Duration },
}

impl Error {
    /// Unwraps a finalizer's error: a failed cleanup keeps its retry delay;
    /// a failed apply or cleanup names `what` (the object) and keeps its
    /// category; the finalizer's own writes are the API server's.
    pub fn from_finalizer(what: &str, e: kube::runtime::finalizer::Error<Error>) -> Error {
        use kube::runtime::finalizer::Error as Finalizer;
        match e {
            Finalizer::CleanupFailed(
                e @ (Error::CleanupFailed { .. } | Error::DeletionWaits { .. }),
            ) => e,
            Finalizer::ApplyFailed(e) | Finalizer::CleanupFailed(e) => Error::Of {
                object: what.to_string(),
                source: Box::new(e),
            },
            Finalizer::AddFinalizer(source) => Error::Kube {
                what: format!("{what}: cannot add the finalizer"),
                source,
            },
            Finalizer::RemoveFinalizer(source) => Error::Kube {
                what: format!("{what}: cannot remove the finalizer"),
                source,
            },
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
            Error::DeletionWaits { .. } => "waiting",
            Error::Other(_) => "other",
            Error::Of { source, .. } => source.category(),
        }
    }

    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}
