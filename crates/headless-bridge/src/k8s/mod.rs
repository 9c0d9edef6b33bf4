//! The bridge's side of Kubernetes: a client for the API server, the Job executor that turns a
//! run into a Job, the `worker` that runs inside that Job's pod, and the wire format of what
//! a worker reports back.
//!
//! The client authenticates as the pod's ServiceAccount (its token file, re-read as the
//! kubelet rotates it, and its CA); [`crate::config::KubeApi`] lets a test or an operator
//! outside a cluster name another API server.

pub mod carry;
pub mod executor;
pub mod job;
pub mod report;
pub mod worker;

use crate::config::KubeApi;

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no Kubernetes API address: set HB_KUBE_API_URL, or run in a pod \
         (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)"
    )]
    NoAddress,
    #[error("invalid Kubernetes API address `{url}`")]
    BadAddress { url: String },
    #[error("failed to build the Kubernetes client")]
    Build(#[source] kube::Error),
}

/// A client for the API server `api` names, authenticated by its token file.
pub fn client(api: &KubeApi) -> Result<kube::Client, ClientError> {
    let url = match &api.url {
        Some(url) => url.clone(),
        None => {
            let host =
                std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| ClientError::NoAddress)?;
            let port =
                std::env::var("KUBERNETES_SERVICE_PORT").map_err(|_| ClientError::NoAddress)?;
            // An IPv6 service address needs brackets in a URL.
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ClientError::BadAddress { url: url.clone() })?;
    let mut config = kube::Config::new(uri);
    config.root_cert_file = Some(api.ca_file.clone());
    config.auth_info.token_file = Some(api.token_file.display().to_string());
    kube::Client::try_from(config).map_err(ClientError::Build)
}
