//! etcd discovery for [`rsocket_balance`].
//!
//! ```text
//!  server:  Etcd::register(prefix, name, uri, ttl) ──► PUT prefix+name = uri (leased)
//!                                                        lease kept alive every ttl/3
//!  client:  Etcd::watch(prefix, connector) ◄── RANGE prefix, then WATCH from its revision
//!             └─► Stream<Change<key, C>> ──► Balancer
//! ```
//!
//! A server that stops without deregistering disappears when its lease
//! expires (at most `ttl` later); the watch turns that into a removal.
//! A changed value under the same key is a replacement (the old member
//! drains). If the watch breaks (etcd restarted, say) or etcd cancels it,
//! the prefix is listed again and the difference applied.
//!
//! ```no_run
//! use std::time::Duration;
//! use rsocket_balance::{Balancer, TcpConnector};
//! use rsocket_balance_etcd::Etcd;
//! # async fn demo() -> Result<(), rsocket_balance_etcd::EtcdError> {
//! let etcd = Etcd::connect("http://127.0.0.1:2379").await?;
//! // In each server:
//! let registration = etcd
//!     .register("/services/greeter/", "server-1", "10.0.0.1:7878", Duration::from_secs(5))
//!     .await?;
//! // In the client: values are socket addresses here.
//! let targets = etcd.watch("/services/greeter/", |value: &str| {
//!     value.parse().ok().map(TcpConnector::new)
//! });
//! let balancer = Balancer::new(targets);
//! # drop(balancer); registration.deregister().await?; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod proto;

use std::collections::HashMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rsocket_balance::Change;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use proto::*;

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The endpoint URL is not valid.
    #[error("invalid etcd endpoint {endpoint}: {message}")]
    Endpoint {
        /// The URL given.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// Connecting failed.
    #[error("cannot connect to etcd: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// etcd answered with an error status.
    #[error("etcd: {0}")]
    Status(#[from] tonic::Status),
    /// etcd did not grant the lease.
    #[error("etcd refused the lease: {0}")]
    Lease(String),
}

/// A connection to etcd (cheap to clone; reconnects by itself).
#[derive(Debug, Clone)]
pub struct Etcd {
    channel: Channel,
}

fn codec<A, B>() -> tonic_prost::ProstCodec<A, B> {
    tonic_prost::ProstCodec::default()
}

/// The key and range end of every key with `prefix`, as etcd takes them.
/// The empty prefix is every key: etcd refuses an empty key, and `\0` to
/// `\0` is its whole key space.
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    (prefix.to_vec(), prefix_end(prefix))
}

/// The key just after every key with `prefix`, as etcd's range end.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

impl Etcd {
    /// Connects to one etcd endpoint (`http://host:port`).
    pub async fn connect(endpoint: &str) -> Result<Self, EtcdError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| EtcdError::Endpoint {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(Self { channel })
    }

    async fn unary<A, B>(&self, path: &'static str, req: A) -> Result<B, EtcdError>
    where
        A: prost::Message + Send + Sync + 'static,
        B: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let reply = grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                codec(),
            )
            .await?;
        Ok(reply.into_inner())
    }

    async fn streaming<A, B>(
        &self,
        path: &'static str,
        requests: impl Stream<Item = A> + Send + 'static,
    ) -> Result<tonic::Streaming<B>, EtcdError>
    where
        A: prost::Message + Send + Sync + 'static,
        B: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let reply = grpc
            .streaming(
                tonic::Request::new(requests),
                PathAndQuery::from_static(path),
                codec(),
            )
            .await?;
        Ok(reply.into_inner())
    }

    /// Every key under `prefix` (every key at all when it is empty) with
    /// its value, and the revision read.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<(String, String)>, i64), EtcdError> {
        let reply: RangeResponse = self
            .unary("/etcdserverpb.KV/Range", {
                let (key, range_end) = prefix_range(prefix.as_bytes());
                RangeRequest { key, range_end }
            })
            .await?;
        let revision = reply.header.map_or(0, |h| h.revision);
        let kvs = reply
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect();
        Ok((kvs, revision))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let reply: LeaseGrantResponse = self
            .unary(
                "/etcdserverpb.Lease/LeaseGrant",
                LeaseGrantRequest { ttl, id: 0 },
            )
            .await?;
        if !reply.error.is_empty() || reply.id == 0 {
            return Err(EtcdError::Lease(reply.error));
        }
        Ok(reply.id)
    }

    async fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), EtcdError> {
        let _: PutResponse = self
            .unary(
                "/etcdserverpb.KV/Put",
                PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    lease,
                },
            )
            .await?;
        Ok(())
    }

    async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let _: LeaseRevokeResponse = self
            .unary(
                "/etcdserverpb.Lease/LeaseRevoke",
                LeaseRevokeRequest { id: lease },
            )
            .await?;
        Ok(())
    }

    /// Registers a server: puts `prefix + name = value` under a lease of
    /// `ttl` (whole seconds, at least 1) and keeps the lease alive from a
    /// spawned task until the [`Registration`] is dropped or
    /// [`deregister`](Registration::deregister)ed. If the lease is lost
    /// (etcd restarted, a long pause), the key is registered again under a
    /// new lease, once every `ttl / 3` until etcd takes it.
    pub async fn register(
        &self,
        prefix: &str,
        name: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Registration, EtcdError> {
        let key = format!("{prefix}{name}");
        let lease = self.grant(ttl).await?;
        self.put(&key, value, lease).await?;
        debug!(%key, lease, "registered in etcd");
        let (lease_tx, lease_rx) = tokio::sync::watch::channel(lease);
        let task = tokio::spawn(keep_alive(
            self.clone(),
            key.clone(),
            value.to_owned(),
            ttl,
            lease_tx,
        ));
        Ok(Registration {
            etcd: self.clone(),
            key,
            lease: lease_rx,
            task,
        })
    }

    /// Follows every key under `prefix` (a plain string prefix, so end it
    /// with `/`: `/svc/a` also matches `/svc/ab/1`; the empty prefix
    /// matches every key): an insert per key (its value
    /// turned into a connector by `connector`; a value it refuses is
    /// skipped with a warning), a removal when the key is deleted or its
    /// lease expires, and an insert again when its value changes. Runs on
    /// a spawned task until the stream is dropped; reconnects and re-lists
    /// after errors.
    pub fn watch<C, F>(
        &self,
        prefix: &str,
        connector: F,
    ) -> impl Stream<Item = Change<String, C>> + Send + 'static
    where
        C: Send + 'static,
        F: FnMut(&str) -> Option<C> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow(self.clone(), prefix.to_owned(), connector, tx));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }
}

/// A server's entry in etcd, kept alive while this value lives.
#[derive(Debug)]
pub struct Registration {
    etcd: Etcd,
    key: String,
    lease: tokio::sync::watch::Receiver<i64>,
    task: JoinHandle<()>,
}

impl Registration {
    /// The key registered.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current lease id.
    pub fn lease_id(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Stops the keep-alive and revokes the lease, which deletes the key at
    /// once (clients see the removal without waiting for the TTL).
    pub async fn deregister(self) -> Result<(), EtcdError> {
        self.task.abort();
        let lease = self.lease_id();
        self.etcd.revoke(lease).await
    }
}

impl Drop for Registration {
    /// Stops the keep-alive only: the key disappears when the lease
    /// expires, as for a crashed server.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(
    etcd: Etcd,
    key: String,
    value: String,
    ttl: Duration,
    lease: tokio::sync::watch::Sender<i64>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    loop {
        let id = *lease.borrow();
        let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
        // etcd answers (headers included) only once it has a request, so
        // the first one must be queued before the call.
        let _ = tx.send(LeaseKeepAliveRequest { id }).await;
        let requests =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let lost = match etcd
            .streaming::<_, LeaseKeepAliveResponse>("/etcdserverpb.Lease/LeaseKeepAlive", requests)
            .await
        {
            Ok(mut replies) => loop {
                match replies.next().await {
                    Some(Ok(r)) if r.ttl > 0 => {
                        tokio::time::sleep(period).await;
                        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                            break false;
                        }
                    }
                    Some(Ok(_)) => break true,
                    Some(Err(e)) => {
                        warn!(%key, error = %e, "lease keep-alive failed");
                        break false;
                    }
                    None => break false,
                }
            },
            Err(e) => {
                warn!(%key, error = %e, "lease keep-alive stream failed");
                false
            }
        };
        if lost {
            warn!(%key, "lease expired; registering again");
            // Until a new lease carries the key. etcd may refuse for a
            // while (no space, no leader): once a period, not in a tight
            // loop, and a lease whose put failed is left to expire.
            while let Err(e) = register_once(&etcd, &key, &value, ttl, &lease).await {
                warn!(%key, error = %e, "re-registration failed; trying again");
                tokio::time::sleep(period).await;
            }
        } else {
            tokio::time::sleep(period).await;
        }
    }
}

/// Grants a lease, publishes it and puts the key under it.
async fn register_once(
    etcd: &Etcd,
    key: &str,
    value: &str,
    ttl: Duration,
    lease: &tokio::sync::watch::Sender<i64>,
) -> Result<(), EtcdError> {
    let id = etcd.grant(ttl).await?;
    let _ = lease.send(id);
    etcd.put(key, value, id).await
}

/// Lists, then watches from the revision after the listing; on any break,
/// lists again and sends the difference.
async fn follow<C, F>(
    etcd: Etcd,
    prefix: String,
    mut connector: F,
    out: mpsc::Sender<Change<String, C>>,
) where
    C: Send + 'static,
    F: FnMut(&str) -> Option<C> + Send + 'static,
{
    let mut known: HashMap<String, String> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = out.closed() => return,
            r = watch_once(&etcd, &prefix, &mut connector, &out, &mut known) => {
                match r {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => warn!(%prefix, error = %e, "etcd watch broke; listing again"),
                }
            }
        }
        tokio::select! {
            () = out.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Applies one key's new value: sends an insert if it is new or changed.
async fn upsert<C, F>(
    key: String,
    value: String,
    connector: &mut F,
    out: &mpsc::Sender<Change<String, C>>,
    known: &mut HashMap<String, String>,
) where
    F: FnMut(&str) -> Option<C>,
{
    if known.get(&key) == Some(&value) {
        return;
    }
    match connector(&value) {
        Some(c) => {
            known.insert(key.clone(), value);
            let _ = out.send(Change::Insert(key, c)).await;
        }
        None => {
            warn!(%key, %value, "etcd value is not a target; ignored");
            if known.remove(&key).is_some() {
                let _ = out.send(Change::Remove(key)).await;
            }
        }
    }
}

async fn watch_once<C, F>(
    etcd: &Etcd,
    prefix: &str,
    connector: &mut F,
    out: &mpsc::Sender<Change<String, C>>,
    known: &mut HashMap<String, String>,
) -> Result<(), EtcdError>
where
    F: FnMut(&str) -> Option<C>,
{
    let (kvs, revision) = etcd.list(prefix).await?;
    let listed: HashMap<String, String> = kvs.into_iter().collect();
    let gone: Vec<String> = known
        .keys()
        .filter(|k| !listed.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        known.remove(&key);
        let _ = out.send(Change::Remove(key)).await;
    }
    for (key, value) in listed {
        upsert(key, value, connector, out, known).await;
    }

    let (key, range_end) = prefix_range(prefix.as_bytes());
    let create = WatchRequest {
        create_request: Some(WatchCreateRequest {
            key,
            range_end,
            start_revision: revision + 1,
        }),
    };
    // Keep the request stream open for as long as the watch runs.
    let requests = futures::stream::once(async { create }).chain(futures::stream::pending());
    let mut events = etcd
        .streaming::<_, WatchResponse>("/etcdserverpb.Watch/Watch", requests)
        .await?;
    while let Some(reply) = events.next().await {
        let reply = reply?;
        if reply.canceled || reply.compact_revision > 0 {
            debug!(reason = %reply.cancel_reason, "etcd watch cancelled");
            return Ok(());
        }
        for event in reply.events {
            let Some(kv) = event.kv else { continue };
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if event.r#type == EVENT_DELETE {
                if known.remove(&key).is_some() {
                    let _ = out.send(Change::Remove(key)).await;
                }
            } else {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                upsert(key, value, connector, out, known).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{prefix_end, prefix_range};

    #[test]
    fn the_empty_prefix_is_the_whole_key_space() {
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
        assert_eq!(prefix_range(b"/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/svc/"), b"/svc0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
