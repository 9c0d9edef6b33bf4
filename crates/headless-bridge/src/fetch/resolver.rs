//! The URL policy applied where it cannot be dodged: when a host name is resolved for a
//! connection, and when a redirect is followed.
//!
//! Checking a URL once before a download leaves two gaps: a name that resolves to a public
//! address at the check and to a private one at the connection (DNS rebinding), and a
//! redirect to a new host. [`PolicyResolver`] resolves every name the HTTP client connects to
//! and refuses non-public addresses unless the operator allowed the host; [`redirect_allowed`]
//! checks each hop's shape and its IP literal, which no resolver sees.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::policy::{self, UrlPolicy};

/// A connection refused because its host resolved to an address the policy forbids.
#[derive(Debug, thiserror::Error)]
#[error(
    "host `{host}` resolves to the non-public address {addr}, and HB_ALLOWED_HOSTS does not list it"
)]
pub struct AddressRefused {
    pub host: String,
    pub addr: std::net::IpAddr,
}

/// Resolves names for the fetcher's HTTP client, within the policy.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: UrlPolicy,
}

impl PolicyResolver {
    pub fn new(policy: UrlPolicy) -> Self {
        Self { policy }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allowed = self.policy.allows_host(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed && let Some(bad) = addrs.iter().find(|a| !policy::is_public(a.ip())) {
                let addr = bad.ip();
                return Err(Box::new(AddressRefused { host, addr }) as _);
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Checks a redirect target: the policy's syntax rules (https, no credentials, ...) and, for an
/// IP literal, that the address is public unless the operator allowed it.
pub fn redirect_allowed(policy: &UrlPolicy, url: &Url) -> Result<(), String> {
    policy
        .check_syntax(url.as_str())
        .map_err(|e| format!("redirect to a URL that {e}"))?;
    if policy.allows_any_address(url) {
        return Ok(());
    }
    let addr = match url.host() {
        Some(Host::Ipv4(ip)) => ip.into(),
        Some(Host::Ipv6(ip)) => ip.into(),
        // Names are checked when they are resolved for the connection.
        _ => return Ok(()),
    };
    if policy::is_public(addr) {
        Ok(())
    } else {
        Err(format!("redirect to the non-public address {addr}"))
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::public("https://93.184.215.14/t", true)]
    #[case::loopback("https://127.0.0.2/t", false)]
    #[case::metadata("http://169.254.169.254/latest", false)]
    #[case::private("https://10.0.0.1/t", false)]
    #[case::ipv6_loopback("https://[::1]/t", false)]
    #[case::allowed_loopback("http://127.0.0.1:8080/t", true)]
    #[case::plain_http_public("http://93.184.215.14/t", false)]
    #[case::credentials("https://u:p@93.184.215.14/t", false)]
    fn redirect_targets_are_checked_again(#[case] raw: &str, #[case] ok: bool) {
        let policy = UrlPolicy::new(["127.0.0.1"]);
        let url: Url = raw.parse().expect("a URL");
        assert_eq!(redirect_allowed(&policy, &url).is_ok(), ok, "{raw}");
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_unless_allowed() {
        let refused = PolicyResolver::new(UrlPolicy::default());
        let name = || "localhost".parse::<Name>().expect("a name");
        assert!(refused.resolve(name()).await.is_err());
        let allowed = PolicyResolver::new(UrlPolicy::new(["localhost"]));
        assert!(allowed.resolve(name()).await.is_ok());
    }
}
