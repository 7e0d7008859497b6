//! What a call is: its [`MethodKind`], the [`CallInfo`] interceptors see,
//! and the tracing span every call gets.

use std::time::Instant;

use rsocket_core::Interaction;
use tracing::field::Empty;
use tracing::Span;

use crate::{Code, Metadata, Status};

/// The shape of an RPC method and the RSocket interaction it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodKind {
    /// One message in, one out: REQUEST_RESPONSE.
    Unary,
    /// One message in, a stream out: REQUEST_STREAM.
    ServerStreaming,
    /// A stream in, one message out: REQUEST_CHANNEL answered with exactly
    /// one PAYLOAD.
    ClientStreaming,
    /// Streams both ways: REQUEST_CHANNEL.
    BidiStreaming,
    /// A unary method marked fire-and-forget: REQUEST_FNF, nothing comes
    /// back.
    FireAndForget,
}

impl MethodKind {
    /// A short name for logs: `unary`, `server_streaming`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ServerStreaming => "server_streaming",
            Self::ClientStreaming => "client_streaming",
            Self::BidiStreaming => "bidi_streaming",
            Self::FireAndForget => "fire_and_forget",
        }
    }

    /// The interaction a client uses to call a method of this kind.
    pub const fn interaction(self) -> Interaction {
        match self {
            Self::Unary => Interaction::RequestResponse,
            Self::ServerStreaming => Interaction::RequestStream,
            Self::ClientStreaming | Self::BidiStreaming => Interaction::RequestChannel,
            Self::FireAndForget => Interaction::FireAndForget,
        }
    }

    /// Whether a server accepts a call of this kind on `interaction`. Besides
    /// the kind's own interaction, a unary method also accepts REQUEST_FNF
    /// (the result is dropped) and a fire-and-forget method also accepts
    /// REQUEST_RESPONSE (answered with the empty message), so that clients
    /// that do not know the fire-and-forget marking still work.
    #[inline]
    pub(crate) fn accepts(self, interaction: Interaction) -> bool {
        self.accepted() & interaction_bit(interaction) != 0
    }

    /// The interactions [`MethodKind::accepts`], one bit each.
    #[inline]
    pub(crate) const fn accepted(self) -> u8 {
        let single = interaction_bit(Interaction::RequestResponse)
            | interaction_bit(Interaction::FireAndForget);
        match self {
            Self::Unary | Self::FireAndForget => single,
            Self::ServerStreaming => interaction_bit(Interaction::RequestStream),
            Self::ClientStreaming | Self::BidiStreaming => {
                interaction_bit(Interaction::RequestChannel)
            }
        }
    }
}

/// An interaction's bit in [`MethodKind::accepted`].
#[inline]
pub(crate) const fn interaction_bit(interaction: Interaction) -> u8 {
    match interaction {
        Interaction::RequestResponse => 1,
        Interaction::FireAndForget => 2,
        Interaction::RequestStream => 4,
        Interaction::RequestChannel => 8,
    }
}

/// A call as an [`Interceptor`](crate::Interceptor) sees it: the route, the
/// kind, and the metadata, which it may change.
#[derive(Debug, Clone)]
pub struct CallInfo {
    route: &'static str,
    kind: MethodKind,
    metadata: Metadata,
}

impl CallInfo {
    pub(crate) fn new(route: &'static str, kind: MethodKind, metadata: Metadata) -> Self {
        Self {
            route,
            kind,
            metadata,
        }
    }

    /// The route, `package.Service/Method`.
    pub fn route(&self) -> &'static str {
        self.route
    }

    /// The fully qualified service name, `package.Service`.
    pub fn service(&self) -> &'static str {
        self.route.split_once('/').map_or(self.route, |(s, _)| s)
    }

    /// The method name as written in the `.proto` file.
    pub fn method(&self) -> &'static str {
        self.route.split_once('/').map_or("", |(_, m)| m)
    }

    /// The method's kind.
    pub fn kind(&self) -> MethodKind {
        self.kind
    }

    /// The call's metadata (request metadata on both sides).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The call's metadata, mutably: a client interceptor can add a token,
    /// a server interceptor can strip or rewrite entries before the handler
    /// sees them.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    pub(crate) fn into_metadata(self) -> Metadata {
        self.metadata
    }
}

/// The `rpc` span of one call (fields `side`, `route`, `kind`, `outcome`,
/// `duration_us`). Records the outcome once: when told, or `CANCELLED` when
/// dropped first (the call's future or stream was dropped).
///
/// The span is made for every call; when no one listens to it (no
/// subscriber, or its level is off), `tracing` gives a disabled span,
/// which is not kept: the call then carries one null pointer, and entering
/// and finishing it are a test of that pointer.
#[derive(Debug)]
pub(crate) struct CallSpan(Option<Box<Listened>>);

/// A span someone listens to, with the call's start.
#[derive(Debug)]
struct Listened {
    span: Span,
    start: Instant,
    done: bool,
}

/// What [`CallSpan::span`] gives for a span no one listens to.
static DISABLED: Span = Span::none();

impl CallSpan {
    #[inline]
    pub(crate) fn new(side: &'static str, route: &str, kind: MethodKind) -> Self {
        let span = tracing::debug_span!(
            "rpc",
            side,
            route,
            kind = kind.as_str(),
            outcome = Empty,
            duration_us = Empty,
        );
        if span.is_disabled() {
            return Self(None);
        }
        // The clock is read only when someone listens.
        Self(Some(Box::new(Listened {
            span,
            start: Instant::now(),
            done: false,
        })))
    }

    /// Whether anyone listens to this span (otherwise it is a no-op and
    /// need not be entered).
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The span (a disabled one when no one listens).
    pub(crate) fn span(&self) -> &Span {
        self.0.as_ref().map_or(&DISABLED, |l| &l.span)
    }

    /// Enters the span for a poll, when anyone listens.
    #[inline]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.0.as_ref().map(|l| l.span.enter())
    }

    /// Records the outcome: `OK` or the status code.
    #[inline]
    pub(crate) fn finish<T>(&mut self, result: &Result<T, Status>) {
        if let Some(listened) = &mut self.0 {
            let code = match result {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            listened.finish(code, result.as_ref().err());
        }
    }

    /// Records a failure.
    #[inline]
    pub(crate) fn fail(&mut self, status: &Status) {
        if let Some(listened) = &mut self.0 {
            listened.finish(status.code(), Some(status));
        }
    }
}

impl Listened {
    fn finish(&mut self, code: Code, status: Option<&Status>) {
        if self.done {
            return;
        }
        self.done = true;
        let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.span.record("outcome", code.as_str());
        self.span.record("duration_us", micros);
        let _enter = self.span.enter();
        match status {
            Some(s) => tracing::debug!(message = s.message(), "call failed"),
            None => tracing::debug!("call finished"),
        }
    }
}

impl Drop for Listened {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if std::thread::panicking() {
            // Dropped while a panic unwinds through the call's handler.
            let status = Status::internal("the handler panicked");
            self.finish(status.code(), Some(&status));
        } else {
            self.finish(Code::Cancelled, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the fields of every span made and every value recorded.
    #[derive(Default, Clone)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct Fields<'a>(&'a mut Vec<String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push(format!("{}={value:?}", field.name()));
        }

        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push(format!("{}={value}", field.name()));
        }
    }

    impl tracing::Subscriber for Recorder {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            span.record(&mut Fields(&mut self.0.lock().unwrap()));
            tracing::span::Id::from_u64(1)
        }

        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            values.record(&mut Fields(&mut self.0.lock().unwrap()));
        }

        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn span_kept_and_recorded_only_when_listened_to() {
        let mut quiet = CallSpan::new("client", "a.B/C", MethodKind::Unary);
        assert!(!quiet.enabled());
        assert!(quiet.span().is_disabled());
        quiet.finish::<()>(&Ok(()));

        let recorder = Recorder::default();
        tracing::subscriber::with_default(recorder.clone(), || {
            let mut span = CallSpan::new("server", "a.B/C", MethodKind::Unary);
            assert!(span.enabled());
            assert!(span.enter().is_some());
            span.fail(&Status::not_found("x"));
            // Recorded once.
            span.finish::<()>(&Ok(()));
            // Dropped before its outcome: cancelled.
            drop(CallSpan::new("client", "a.B/D", MethodKind::Unary));
        });
        let fields = recorder.0.lock().unwrap().clone();
        for field in ["side=server", "route=a.B/C", "kind=unary", "route=a.B/D"] {
            assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
        }
        let outcomes: Vec<_> = fields
            .iter()
            .filter(|f| f.starts_with("outcome="))
            .collect();
        assert_eq!(outcomes, ["outcome=NOT_FOUND", "outcome=CANCELLED"]);
        assert_eq!(
            fields
                .iter()
                .filter(|f| f.starts_with("duration_us="))
                .count(),
            2
        );
    }

    #[test]
    fn route_parts() {
        let info = CallInfo::new("pkg.Svc/Do", MethodKind::Unary, Metadata::new());
        assert_eq!(info.service(), "pkg.Svc");
        assert_eq!(info.method(), "Do");
    }

    #[test]
    fn accepted_interactions() {
        use Interaction::*;
        assert!(MethodKind::Unary.accepts(RequestResponse));
        assert!(MethodKind::Unary.accepts(FireAndForget));
        assert!(MethodKind::FireAndForget.accepts(RequestResponse));
        assert!(!MethodKind::Unary.accepts(RequestStream));
        assert!(!MethodKind::ServerStreaming.accepts(RequestResponse));
        assert!(MethodKind::BidiStreaming.accepts(RequestChannel));
        assert!(!MethodKind::ClientStreaming.accepts(RequestStream));
        for kind in [
            MethodKind::Unary,
            MethodKind::ServerStreaming,
            MethodKind::ClientStreaming,
            MethodKind::BidiStreaming,
            MethodKind::FireAndForget,
        ] {
            assert!(kind.accepts(kind.interaction()), "{kind:?}");
        }
    }
}
