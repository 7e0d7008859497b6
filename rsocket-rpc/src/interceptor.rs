//! Interceptors: async hooks that run before a call, on the client before
//! anything is sent and on the server before the handler is dispatched.

use std::fmt;
use std::sync::Arc;

use rsocket_core::async_trait;

use crate::{CallInfo, Status};

/// Runs before every call: sees the route, the kind and the metadata, may
/// change the metadata (add a bearer token, strip a header), and may reject
/// the call with a [`Status`].
///
/// On a client, a rejection fails the call before any frame is sent. On a
/// server, it answers `ERROR[REJECTED]` with the status in the message
/// (`"UNAUTHENTICATED: ..."`) and the handler never runs.
///
/// Interceptors run in the order they were added. For synchronous logic,
/// [`interceptor_fn`] wraps a closure.
///
/// Implement it with `#[async_trait]` (re-exported as
/// `rsocket_rpc::async_trait`):
///
/// ```
/// use rsocket_rpc::{async_trait, CallInfo, Interceptor, Status};
///
/// /// Rejects calls without the right bearer token.
/// struct RequireToken;
///
/// #[async_trait]
/// impl Interceptor for RequireToken {
///     async fn intercept(&self, call: &mut CallInfo) -> Result<(), Status> {
///         match call.metadata().bearer_token() {
///             Some(t) if t == "secret" => Ok(()),
///             _ => Err(Status::unauthenticated("a bearer token is required")),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Interceptor: Send + Sync + 'static {
    /// Inspects (and may change) the call; `Err` rejects it.
    async fn intercept(&self, call: &mut CallInfo) -> Result<(), Status>;
}

#[async_trait]
impl<I: Interceptor + ?Sized> Interceptor for Arc<I> {
    async fn intercept(&self, call: &mut CallInfo) -> Result<(), Status> {
        (**self).intercept(call).await
    }
}

/// An [`Interceptor`] made from a synchronous closure.
///
/// ```
/// use rsocket_rpc::{interceptor_fn, Status};
/// let add_token = interceptor_fn(|call| {
///     call.metadata_mut()
///         .set_bearer_token("secret")
///         .map_err(|e| Status::internal(e.to_string()))
/// });
/// # let _ = add_token;
/// ```
pub fn interceptor_fn<F>(f: F) -> FnInterceptor<F>
where
    F: Fn(&mut CallInfo) -> Result<(), Status> + Send + Sync + 'static,
{
    FnInterceptor(f)
}

/// See [`interceptor_fn`].
#[derive(Clone, Copy)]
pub struct FnInterceptor<F>(F);

impl<F> fmt::Debug for FnInterceptor<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnInterceptor").finish_non_exhaustive()
    }
}

#[async_trait]
impl<F> Interceptor for FnInterceptor<F>
where
    F: Fn(&mut CallInfo) -> Result<(), Status> + Send + Sync + 'static,
{
    async fn intercept(&self, call: &mut CallInfo) -> Result<(), Status> {
        (self.0)(call)
    }
}

/// A list of interceptors, run in order.
#[derive(Clone, Default)]
pub(crate) struct Interceptors(Vec<Arc<dyn Interceptor>>);

impl fmt::Debug for Interceptors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} interceptor(s)", self.0.len())
    }
}

impl Interceptors {
    pub(crate) fn push(&mut self, i: impl Interceptor) {
        self.0.push(Arc::new(i));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every interceptor; stops at the first rejection.
    pub(crate) async fn run(&self, call: &mut CallInfo) -> Result<(), Status> {
        for i in &self.0 {
            i.intercept(call).await?;
        }
        Ok(())
    }
}
