//! Which URLs a run may fetch from: the guard against a request that points the bridge at its
//! own network.
//!
//! By default a repository or tool URL must use https and name a host whose every address is
//! public. Operators list hosts in `HB_ALLOWED_HOSTS` to let them resolve to loopback or private
//! addresses (an in-cluster git server, a test fixture); only those hosts may use plain http.
//! The check runs before any work starts, so a refused URL never costs a clone or a download.
//! Repositories may also use `ssh://`, but only to hosts the operator listed: ssh reaches
//! whatever the host name resolves to, and no HTTP hook would see a redirect.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use url::{Host, Url};

/// How long a host name may take to resolve before the URL is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The operator's host policy for outbound URLs.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    allowed_hosts: BTreeSet<String>,
}

/// Why a URL was refused. Every variant is the client's fault and maps to a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is empty")]
    Empty,
    #[error("begins with '-', which a program could read as an option")]
    LeadingDash,
    #[error("contains whitespace or control characters")]
    ControlCharacters,
    #[error("is not a valid absolute URL ({0})")]
    Malformed(String),
    #[error("uses scheme `{0}`: only https is accepted")]
    Scheme(String),
    #[error("uses plain http for host `{0}`, which is not in HB_ALLOWED_HOSTS: use https")]
    PlainHttp(String),
    #[error(
        "uses plain http for host `{0}`, a loopback or private address: an operator must list \
         the host in HB_ALLOWED_HOSTS to allow it"
    )]
    PlainHttpLocal(String),
    #[error("carries a user name or password: give credentials another way, never in the URL")]
    Credentials,
    #[error("has no host")]
    NoHost,
    #[error(
        "names host `{host}`, which resolves to the non-public address {addr}; \
         an operator must list the host in HB_ALLOWED_HOSTS to allow it"
    )]
    NonPublicAddress { host: String, addr: IpAddr },
    #[error("names host `{0}`, which did not resolve to any address")]
    Unresolvable(String),
    #[error(
        "uses ssh to host `{0}`, which is not in HB_ALLOWED_HOSTS: use https, or ask the operator"
    )]
    SshHost(String),
}

impl UrlError {
    /// The stable error code an API client can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NonPublicAddress { .. }
            | Self::PlainHttp(_)
            | Self::PlainHttpLocal(_)
            | Self::SshHost(_) => "url_not_allowed",
            Self::Unresolvable(_) => "url_host_unresolvable",
            Self::Credentials => "url_has_credentials",
            _ => "invalid_url",
        }
    }
}

impl UrlPolicy {
    /// A policy that lets `hosts` (names or IP literals, compared case-insensitively) resolve
    /// anywhere and use plain http.
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let allowed_hosts = hosts
            .into_iter()
            .map(|h| normalize_host(h.as_ref()))
            .filter(|h| !h.is_empty())
            .collect();
        Self { allowed_hosts }
    }

    /// Checks `raw` and returns it parsed. Resolves the host name unless it is allowed.
    pub async fn check(&self, raw: &str) -> Result<Url, UrlError> {
        let url = self.check_syntax(raw)?;
        self.check_addresses(&url).await?;
        Ok(url)
    }

    /// The check that may need the network, for a URL [`UrlPolicy::check_syntax`] or
    /// [`UrlPolicy::check_repo_syntax`] accepted: every address its host resolves to is
    /// public, unless the operator allowed the host (as every ssh host is).
    pub async fn check_addresses(&self, url: &Url) -> Result<(), UrlError> {
        let host = url.host().ok_or(UrlError::NoHost)?;
        if self.is_allowed(&host) {
            return Ok(());
        }
        let addrs = resolve(&host, url.port_or_known_default().unwrap_or(443)).await?;
        if let Some(addr) = addrs.into_iter().find(|a| !is_public(*a)) {
            return Err(UrlError::NonPublicAddress {
                host: host.to_string(),
                addr,
            });
        }
        Ok(())
    }

    /// The addresses a program that resolves names itself (git) must connect to for `url`,
    /// as a curl `--resolve` entry `host:port:addr[,addr]`: resolved and checked now, so a
    /// name cannot point somewhere else by the time the connection is made (DNS rebinding).
    /// `None` when there is nothing to pin: an IP literal, an allowed host, or not http(s).
    pub async fn pin(&self, url: &Url) -> Result<Option<String>, UrlError> {
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(None);
        };
        if !matches!(url.scheme(), "http" | "https") || self.allows_host(name) {
            return Ok(None);
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs = resolve(&Host::Domain(name), port).await?;
        if let Some(addr) = addrs.iter().copied().find(|a| !is_public(*a)) {
            let host = name.to_owned();
            return Err(UrlError::NonPublicAddress { host, addr });
        }
        let shown: Vec<String> = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            })
            .collect();
        Ok(Some(format!("{name}:{port}:{}", shown.join(","))))
    }

    /// Checks a repository URL: whatever [`UrlPolicy::check`] accepts, or
    /// `ssh://[user@]host[:port]/path` when the operator listed the host. An ssh user name is
    /// not a secret (it is `git` on every code host); a password is refused.
    pub async fn check_repo(&self, raw: &str) -> Result<Url, UrlError> {
        let url = self.check_repo_syntax(raw)?;
        self.check_addresses(&url).await?;
        Ok(url)
    }

    /// The checks of [`UrlPolicy::check_repo`] that need no network.
    pub fn check_repo_syntax(&self, raw: &str) -> Result<Url, UrlError> {
        if !raw
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("ssh://"))
        {
            return self.check_syntax(raw);
        }
        check_shape(raw)?;
        let url = Url::parse(raw).map_err(|e| UrlError::Malformed(e.to_string()))?;
        if url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        let host = url.host().ok_or(UrlError::NoHost)?;
        if !self.is_allowed(&host) || url.username().starts_with('-') {
            return Err(UrlError::SshHost(host.to_string()));
        }
        Ok(url)
    }

    /// Whether the operator listed `host` (a name or an IP literal).
    pub fn allows_host(&self, host: &str) -> bool {
        self.allowed_hosts.contains(&normalize_host(host))
    }

    /// The checks that need no network: shape, scheme, credentials and plain http.
    pub fn check_syntax(&self, raw: &str) -> Result<Url, UrlError> {
        let url = check_http_url(raw)?;
        let host = url.host().ok_or(UrlError::NoHost)?;
        if url.scheme() == "http" && !self.is_allowed(&host) {
            // Over https such a host would be refused next for its address, so "use https"
            // would send the caller round in a circle.
            return Err(if is_local(&host) {
                UrlError::PlainHttpLocal(host.to_string())
            } else {
                UrlError::PlainHttp(host.to_string())
            });
        }
        Ok(url)
    }

    /// Whether the operator allowed this URL's host to resolve to any address.
    pub fn allows_any_address(&self, url: &Url) -> bool {
        url.host().is_some_and(|host| self.is_allowed(&host))
    }

    fn is_allowed(&self, host: &Host<&str>) -> bool {
        self.allowed_hosts
            .contains(&normalize_host(&host.to_string()))
    }
}

/// The checks of a tool or callback URL that need neither the network nor the operator's
/// settings: its shape, an http(s) scheme, no credentials, a host and a port that names a
/// service. Every bridge makes them ([`UrlPolicy::check_syntax`] adds the rule on plain http),
/// so a client can make them before it sends a request.
pub fn check_http_url(raw: &str) -> Result<Url, UrlError> {
    check_shape(raw)?;
    let url = Url::parse(raw).map_err(|e| UrlError::Malformed(e.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.host().is_none() {
        return Err(UrlError::NoHost);
    }
    if url.port() == Some(0) {
        return Err(UrlError::Malformed("port 0 names no service".into()));
    }
    Ok(url)
}

/// What no URL may look like, whatever its scheme: empty, option-like, or with whitespace.
fn check_shape(raw: &str) -> Result<(), UrlError> {
    if raw.is_empty() {
        return Err(UrlError::Empty);
    }
    if raw.starts_with('-') {
        return Err(UrlError::LeadingDash);
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::ControlCharacters);
    }
    Ok(())
}

/// A host that is not public by its name alone: a loopback, private or otherwise reserved IP
/// literal, or `localhost` and the names below it (RFC 6761, section 6.3).
fn is_local(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => !is_public(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => !is_public(IpAddr::V6(*ip)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Lowercases a host and drops the brackets of an IPv6 literal, so `[::1]` matches `::1`.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

async fn resolve(host: &Host<&str>, port: u16) -> Result<Vec<IpAddr>, UrlError> {
    let name = match host {
        Host::Ipv4(ip) => return Ok(vec![IpAddr::V4(*ip)]),
        Host::Ipv6(ip) => return Ok(vec![IpAddr::V6(*ip)]),
        Host::Domain(name) => *name,
    };
    let unresolvable = || UrlError::Unresolvable(name.to_owned());
    let lookup = tokio::net::lookup_host((name, port));
    let addrs: Vec<IpAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        Ok(Err(_)) | Err(_) => return Err(unresolvable()),
    };
    if addrs.is_empty() {
        return Err(unresolvable());
    }
    Ok(addrs)
}

/// Whether an address is on the public internet: not loopback, private, link-local (which
/// holds the cloud metadata address 169.254.169.254), shared, reserved or multicast.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b); // RFC 6598 carrier-grade NAT
    let benchmarking = a == 198 && (b == 18 || b == 19); // RFC 2544
    let protocol_assignments = a == 192 && b == 0 && c == 0; // RFC 6890
    let relay_anycast = a == 192 && b == 88 && c == 99; // RFC 7526, 6to4 relays
    let reserved = a >= 240; // RFC 1112, includes broadcast
    let this_network = a == 0;
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_documentation()
        || shared
        || benchmarking
        || protocol_assignments
        || relay_anycast
        || reserved
        || this_network)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, ..] = ip.segments();
    // 6to4 (RFC 3056) carries an IPv4 address in bits 16..48; judge that address.
    if first == 0x2002 {
        let [a, b] = second.to_be_bytes();
        let [c, d] = third.to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // IPv4-translated addresses (RFC 2765, ::ffff:0:a.b.c.d) reach the IPv4 address too.
    let segments = ip.segments();
    if segments[..4].iter().all(|s| *s == 0) && segments[4] == 0xffff && segments[5] == 0 {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    let unique_local = (first & 0xfe00) == 0xfc00; // RFC 4193
    let link_local = (first & 0xffc0) == 0xfe80;
    let site_local = (first & 0xffc0) == 0xfec0; // deprecated by RFC 3879, still routed by some
    let documentation = first == 0x2001 && second == 0x0db8;
    let teredo = first == 0x2001 && second == 0; // RFC 4380, tunnels to any IPv4 address
    let discard = first == 0x0100 && ip.segments()[1..4].iter().all(|s| *s == 0); // RFC 6666
    let nat64 = first == 0x0064 && second == 0xff9b; // may embed private IPv4
    let ipv4_compatible = ip.segments()[..6].iter().all(|s| *s == 0); // ::/96, deprecated
    !(ipv4_compatible
        || ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || site_local
        || documentation
        || teredo
        || discard
        || nat64)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn policy() -> UrlPolicy {
        UrlPolicy::new(["git.internal", "127.0.0.1", "[::1]"])
    }

    #[rstest]
    #[case::public_https("https://93.184.215.14/repo.git")]
    #[case::allowed_http_name("http://git.internal:8080/repo.git")]
    #[case::allowed_loopback("http://127.0.0.1:9000/tool")]
    #[case::allowed_ipv6("http://[::1]:9000/tool")]
    #[case::allowed_name_case("https://GIT.internal/repo.git")]
    #[tokio::test]
    async fn accepts(#[case] raw: &str) {
        assert!(policy().check(raw).await.is_ok(), "{raw} should pass");
    }

    #[rstest]
    #[case::empty("", "invalid_url")]
    #[case::dash("-uhttps://x", "invalid_url")]
    #[case::option_like("--upload-pack=touch /tmp/x", "invalid_url")]
    #[case::space("https://93.184.215.14/a b", "invalid_url")]
    #[case::newline("https://93.184.215.14/a\nb", "invalid_url")]
    #[case::relative("repo.git", "invalid_url")]
    #[case::file("file:///etc/passwd", "invalid_url")]
    #[case::ssh("ssh://git@93.184.215.14/repo.git", "invalid_url")]
    #[case::ext("ext::sh -c touch% /tmp/pwned", "invalid_url")]
    #[case::plain_http_public("http://93.184.215.14/tool", "url_not_allowed")]
    #[case::loopback("https://127.0.0.2/tool", "url_not_allowed")]
    #[case::private("https://10.1.2.3/tool", "url_not_allowed")]
    #[case::metadata("https://169.254.169.254/latest/meta-data", "url_not_allowed")]
    #[case::cgnat("https://100.64.0.1/", "url_not_allowed")]
    #[case::unspecified("https://0.0.0.0/", "url_not_allowed")]
    #[case::ipv6_loopback("https://[::2]/", "url_not_allowed")]
    #[case::ipv6_mapped_private("https://[::ffff:192.168.1.1]/", "url_not_allowed")]
    #[case::ipv6_unique_local("https://[fd00::1]/", "url_not_allowed")]
    #[case::six_to_four_loopback("https://[2002:7f00:1::]/", "url_not_allowed")]
    #[case::six_to_four_metadata("https://[2002:a9fe:a9fe::]/", "url_not_allowed")]
    #[case::site_local("https://[fec0::1]/", "url_not_allowed")]
    #[case::teredo("https://[2001:0:4136:e378::1]/", "url_not_allowed")]
    #[case::discard("https://[100::1]/", "url_not_allowed")]
    #[case::mapped_zero_metadata("https://[::ffff:0:a9fe:a9fe]/", "url_not_allowed")]
    #[case::protocol_assignments("https://192.0.0.170/", "url_not_allowed")]
    #[case::relay_anycast("https://192.88.99.1/", "url_not_allowed")]
    #[case::port_zero("https://93.184.215.14:0/", "invalid_url")]
    #[case::userinfo("https://user:pass@93.184.215.14/repo.git", "url_has_credentials")]
    #[case::token_user("https://ghp_token@93.184.215.14/repo.git", "url_has_credentials")]
    #[tokio::test]
    async fn refuses(#[case] raw: &str, #[case] code: &str) {
        let err = policy().check(raw).await.expect_err("must be refused");
        assert_eq!(err.code(), code, "{raw}: {err}");
    }

    #[rstest]
    #[case::allowed_ssh("ssh://git@git.internal/acme/widget.git", Ok(()))]
    #[case::allowed_ssh_port("ssh://git@git.internal:2222/widget.git", Ok(()))]
    #[case::https_still_fine("https://93.184.215.14/repo.git", Ok(()))]
    #[case::unlisted_ssh("ssh://git@93.184.215.14/repo.git", Err("url_not_allowed"))]
    #[case::ssh_password("ssh://git:secret@git.internal/repo.git", Err("url_has_credentials"))]
    #[case::ssh_option_user("ssh://-oProxyCommand=x@git.internal/r.git", Err("url_not_allowed"))]
    #[case::ssh_dash("-ssh://git.internal/r.git", Err("invalid_url"))]
    #[case::scp_like("git@git.internal:acme/widget.git", Err("invalid_url"))]
    #[tokio::test]
    async fn repositories_may_use_ssh_to_listed_hosts(
        #[case] raw: &str,
        #[case] expected: Result<(), &str>,
    ) {
        let result = policy()
            .check_repo(raw)
            .await
            .map(drop)
            .map_err(|e| e.code());
        assert_eq!(result, expected, "{raw}");
    }

    #[rstest]
    #[case::ip_literal("https://93.184.215.14/r.git")]
    #[case::allowed_name("http://git.internal:8080/r.git")]
    #[case::ssh("ssh://git@git.internal/r.git")]
    #[tokio::test]
    async fn only_names_outside_the_allowed_list_are_pinned(#[case] raw: &str) {
        let url: Url = raw.parse().expect("a URL");
        assert_eq!(policy().pin(&url).await, Ok(None));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_not_pinned_but_refused() {
        let url: Url = "https://localhost/r.git".parse().expect("a URL");
        let err = policy().pin(&url).await.expect_err("refused");
        assert_eq!(err.code(), "url_not_allowed");
    }

    /// Regression: plain http to a loopback host said "use https", which would then be
    /// refused for the address.
    #[rstest]
    #[case::loopback("http://127.0.0.2:8080/r.git")]
    #[case::private("http://10.1.2.3/tool")]
    #[case::ipv6_loopback("http://[::2]/tool")]
    #[case::localhost("http://localhost:9000/tool")]
    #[case::below_localhost("http://git.localhost/r.git")]
    fn plain_http_to_a_local_host_asks_for_the_allowed_list(#[case] raw: &str) {
        let err = policy().check_syntax(raw).expect_err("refused");
        assert_eq!(err.code(), "url_not_allowed");
        let message = err.to_string();
        assert!(
            message.contains("an operator must list the host in HB_ALLOWED_HOSTS")
                && !message.contains("use https"),
            "{raw}: {message}"
        );
    }

    #[test]
    fn plain_http_to_a_public_host_asks_for_https() {
        let err = policy()
            .check_syntax("http://93.184.215.14/tool")
            .expect_err("refused");
        assert!(err.to_string().ends_with("use https"), "{err}");
    }

    #[test]
    fn names_the_setting_when_an_address_is_private() {
        let err = UrlError::NonPublicAddress {
            host: "git".into(),
            addr: [10, 0, 0, 1].into(),
        };
        assert!(err.to_string().contains("HB_ALLOWED_HOSTS"));
    }
}
