//! DNS discovery: re-resolve a name every interval and follow its set of
//! endpoints, from SRV records (host and port) or from A/AAAA records plus
//! a configured port. This is how a Kubernetes headless service (whose
//! name resolves to one A record per ready pod, and whose named ports have
//! SRV records) or any DNS-based registry is used.
//!
//! ```no_run
//! use rsocket_balance::dns::DnsDiscovery;
//! use rsocket_balance::Balancer;
//! use std::time::Duration;
//! # async fn demo() -> Result<(), rsocket_balance::dns::DnsError> {
//! // Every pod behind the headless service `greeter`, port 7878.
//! let targets = DnsDiscovery::ip("greeter.default.svc.cluster.local", 7878)
//!     .interval(Duration::from_secs(5))
//!     .tcp()?;
//! let balancer = Balancer::new(targets);
//! # let _ = balancer; Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{IntoName, RData, RecordType};
use hickory_resolver::TokioResolver;
use tracing::{debug, warn};

use crate::discovery::{Change, Differ};
use crate::TcpConnector;

/// Why DNS discovery could not start or a lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The resolver could not be built (for example, no usable system
    /// configuration and no nameserver set).
    #[error("DNS resolver: {0}")]
    Resolver(String),
    /// A lookup failed (timeout, server failure). An empty answer is not
    /// an error: it is an empty set.
    #[error("DNS lookup of {name}: {message}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// What went wrong.
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Srv,
    Ip { port: u16 },
}

/// Follows the endpoints a DNS name resolves to. Keys are socket
/// addresses, so a pod that comes back with a new IP is a replacement
/// (one removal, one insertion).
#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    name: String,
    mode: Mode,
    interval: Duration,
    nameserver: Option<SocketAddr>,
    timeout: Duration,
}

impl DnsDiscovery {
    /// SRV records of `name` (for example
    /// `_rsocket._tcp.greeter.default.svc.cluster.local`): each gives a
    /// host, resolved to its addresses, and a port. Priorities and SRV
    /// weights are not applied: every endpoint is a member.
    pub fn srv(name: impl Into<String>) -> Self {
        Self::with_mode(name.into(), Mode::Srv)
    }

    /// A and AAAA records of `name`, each address with `port`.
    pub fn ip(name: impl Into<String>, port: u16) -> Self {
        Self::with_mode(name.into(), Mode::Ip { port })
    }

    fn with_mode(name: String, mode: Mode) -> Self {
        Self {
            name,
            mode,
            interval: Duration::from_secs(5),
            nameserver: None,
            timeout: Duration::from_secs(2),
        }
    }

    /// How often to re-resolve (default 5 s).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Asks this nameserver (UDP) instead of the system's
    /// (`/etc/resolv.conf`, whose search domains make short Kubernetes
    /// names work).
    #[must_use]
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameserver = Some(addr);
        self
    }

    /// How long one query may take (default 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn resolver(&self) -> Result<TokioResolver, DnsError> {
        let mut builder = match self.nameserver {
            Some(ns) => {
                let mut conn = ConnectionConfig::udp();
                conn.port = ns.port();
                let server = NameServerConfig::new(ns.ip(), true, vec![conn]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder(TokioRuntimeProvider::default())
                .map_err(|e| DnsError::Resolver(e.to_string()))?,
        };
        builder.options_mut().timeout = self.timeout;
        builder.options_mut().attempts = 1;
        builder
            .build()
            .map_err(|e| DnsError::Resolver(e.to_string()))
    }

    /// Resolves once, with a resolver built for the purpose.
    pub async fn resolve(&self) -> Result<BTreeSet<SocketAddr>, DnsError> {
        let resolver = self.resolver()?;
        resolve(&resolver, &self.name, self.mode).await
    }

    /// The changes to the set of endpoints: the first resolution at once,
    /// then one every interval. A failed lookup changes nothing (members
    /// stay), and a lookup fails when any of its queries does (the A or
    /// the AAAA query of a name, the addresses of one SRV target); an
    /// empty answer (no records, NXDOMAIN) removes them all.
    pub fn changes<C, F>(
        self,
        connector: F,
    ) -> Result<impl Stream<Item = Change<SocketAddr, C>> + Send + 'static, DnsError>
    where
        C: Send + 'static,
        F: FnMut(SocketAddr) -> C + Send + 'static,
    {
        let resolver = self.resolver()?;
        let state = (self, resolver, Differ::new(), connector, true);
        let batches = futures::stream::unfold(
            state,
            |(this, resolver, mut differ, mut connector, first)| async move {
                if !first {
                    tokio::time::sleep(this.interval).await;
                }
                // Each round asks the server again rather than the cache.
                resolver.clear_cache();
                let changes = match resolve(&resolver, &this.name, this.mode).await {
                    Ok(addrs) => {
                        let changes = differ.diff_keys(addrs, |a| *a);
                        if !changes.is_empty() {
                            debug!(name = %this.name, ?changes, "DNS endpoints changed");
                        }
                        changes
                            .into_iter()
                            .map(|c| match c {
                                Change::Insert(k, a) => Change::Insert(k, connector(a)),
                                Change::Remove(k) => Change::Remove(k),
                            })
                            .collect()
                    }
                    Err(e) => {
                        warn!(error = %e, "DNS lookup failed; keeping the current members");
                        Vec::new()
                    }
                };
                Some((
                    futures::stream::iter(changes),
                    (this, resolver, differ, connector, false),
                ))
            },
        );
        Ok(batches.flatten())
    }

    /// [`changes`](Self::changes) with a default [`TcpConnector`] per
    /// endpoint.
    pub fn tcp(
        self,
    ) -> Result<impl Stream<Item = Change<SocketAddr, TcpConnector>> + Send + 'static, DnsError>
    {
        self.changes(TcpConnector::new)
    }

    /// [`changes`](Self::changes) with a [`TcpConnector`] per endpoint
    /// using `builder` (SETUP, keepalive, limits).
    pub fn tcp_with(
        self,
        builder: rsocket_core::ClientBuilder,
    ) -> Result<impl Stream<Item = Change<SocketAddr, TcpConnector>> + Send + 'static, DnsError>
    {
        self.changes(move |addr| TcpConnector::new(addr).with_builder(builder.clone()))
    }
}

async fn resolve(
    resolver: &TokioResolver,
    name: &str,
    mode: Mode,
) -> Result<BTreeSet<SocketAddr>, DnsError> {
    let err = |e: &dyn std::fmt::Display| DnsError::Lookup {
        name: name.to_owned(),
        message: e.to_string(),
    };
    let mut out = BTreeSet::new();
    match mode {
        Mode::Ip { port } => {
            if let Ok(ip) = name.trim_end_matches('.').parse::<IpAddr>() {
                out.insert(SocketAddr::new(ip, port));
            } else {
                let ips = lookup_ips(resolver, name).await.map_err(|e| err(&e))?;
                out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)));
            }
        }
        Mode::Srv => {
            let lookup = match resolver.srv_lookup(name).await {
                Ok(l) => l,
                Err(e) if e.is_no_records_found() => return Ok(out),
                Err(e) => return Err(err(&e)),
            };
            for record in lookup.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                // An address as the target needs no lookup.
                let target = srv.target.to_utf8();
                if let Ok(ip) = target.trim_end_matches('.').parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, srv.port));
                    continue;
                }
                let ips = lookup_ips(resolver, srv.target.clone())
                    .await
                    .map_err(|e| err(&e))?;
                out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, srv.port)));
            }
        }
    }
    Ok(out)
}

/// The A and AAAA records of `host`, asked for in parallel. A family
/// without records adds nothing; a failed query (timeout, SERVFAIL) fails
/// the whole lookup. The resolver's `lookup_ip` would not do: it answers
/// with the other family's records (or its "no records") when one query
/// fails, which would drop the endpoints of the failed family.
async fn lookup_ips(
    resolver: &TokioResolver,
    host: impl IntoName + Clone,
) -> Result<Vec<IpAddr>, hickory_resolver::net::NetError> {
    let (v4, v6) = futures::future::join(
        resolver.lookup(host.clone(), RecordType::A),
        resolver.lookup(host, RecordType::AAAA),
    )
    .await;
    let mut ips = Vec::new();
    for answer in [v4, v6] {
        match answer {
            Ok(lookup) => ips.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ips)
}
