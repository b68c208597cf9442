//! What the operator's tests against the local control plane share.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

/// The workspace root (the examples, charts and README are read from it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is in the workspace")
        .to_path_buf()
}

/// The control plane's kubectl and helm, when KUBECONFIG is the one
/// `scripts/control-plane` wrote; otherwise fails saying how to start it (a
/// test must never touch another cluster).
pub fn require_control_plane() -> (String, String) {
    let state = std::env::var_os("CLOUDKON_KUBE_STATE_DIR");
    let kubeconfig = std::env::var_os("KUBECONFIG");
    let local = match (&state, &kubeconfig) {
        (Some(state), Some(kubeconfig)) => {
            Path::new(kubeconfig) == Path::new(state).join("kubeconfig")
        }
        _ => false,
    };
    assert!(
        local,
        "KUBECONFIG is not the local control plane's: run scripts/test, or \
         source \"$(scripts/control-plane up)\" first"
    );
    (
        std::env::var("CLOUDKON_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        std::env::var("CLOUDKON_HELM").unwrap_or_else(|_| "helm".into()),
    )
}
