//! [`Request`] and [`Response`]: a message (or a stream of them) plus
//! [`Metadata`], and the conversions generated clients accept.

use std::time::Duration;

use futures::Stream;

use crate::Metadata;

/// A call's input: the message (or [`Streaming`](crate::Streaming) of
/// messages) and the metadata that travels with it.
///
/// On the client, a per-call deadline can be set with
/// [`set_timeout`](Self::set_timeout). On the server, the metadata is what
/// the client sent (after server interceptors ran).
#[derive(Debug, Clone, Default)]
pub struct Request<T> {
    metadata: Metadata,
    message: T,
    timeout: Option<Duration>,
}

impl<T> Request<T> {
    /// A request with no metadata.
    pub fn new(message: T) -> Self {
        Self {
            metadata: Metadata::new(),
            message,
            timeout: None,
        }
    }

    /// A request with metadata.
    pub fn from_parts(metadata: Metadata, message: T) -> Self {
        Self {
            metadata,
            message,
            timeout: None,
        }
    }

    /// The metadata and the message.
    pub fn into_parts(self) -> (Metadata, T) {
        (self.metadata, self.message)
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message.
    pub fn into_inner(self) -> T {
        self.metadata.discard();
        self.message
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Client side: the call fails with `DEADLINE_EXCEEDED` if it has not
    /// completed within `timeout` (for streams: until the last message),
    /// and the request is cancelled (CANCEL on the wire, so the server
    /// drops its handler). Overrides the client's default timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// The per-call timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Changes the message, keeping metadata and timeout.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Request<U> {
        Request {
            metadata: self.metadata,
            message: f(self.message),
            timeout: self.timeout,
        }
    }
}

/// A call's output: the message (or stream) and response metadata.
///
/// The server's response metadata travels on the response PAYLOAD (for
/// streams, on the first one; it is lost if the stream yields nothing).
#[derive(Debug, Clone, Default)]
pub struct Response<T> {
    metadata: Metadata,
    message: T,
}

impl<T> Response<T> {
    /// A response with no metadata.
    pub fn new(message: T) -> Self {
        Self {
            metadata: Metadata::new(),
            message,
        }
    }

    /// A response with metadata.
    pub fn from_parts(metadata: Metadata, message: T) -> Self {
        Self { metadata, message }
    }

    /// The metadata and the message.
    pub fn into_parts(self) -> (Metadata, T) {
        (self.metadata, self.message)
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message.
    pub fn into_inner(self) -> T {
        self.metadata.discard();
        self.message
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Changes the message, keeping the metadata.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Response<U> {
        Response {
            metadata: self.metadata,
            message: f(self.message),
        }
    }
}

/// What a generated client method with one input message accepts: the
/// message itself or a [`Request`] around it.
pub trait IntoRequest<T> {
    /// Wraps or unwraps into a [`Request`].
    fn into_request(self) -> Request<T>;
}

impl<T: prost::Message> IntoRequest<T> for T {
    fn into_request(self) -> Request<T> {
        Request::new(self)
    }
}

impl<T> IntoRequest<T> for Request<T> {
    fn into_request(self) -> Self {
        self
    }
}

/// What a generated client method with a stream of input messages accepts:
/// any `Stream<Item = T> + Send + 'static`, or a [`Request`] around one.
pub trait IntoStreamingRequest {
    /// The stream of messages.
    type Stream: Stream<Item = Self::Message> + Send + 'static;
    /// The message type.
    type Message;

    /// Wraps or unwraps into a [`Request`].
    fn into_streaming_request(self) -> Request<Self::Stream>;
}

impl<S, T> IntoStreamingRequest for S
where
    S: Stream<Item = T> + Send + 'static,
{
    type Stream = S;
    type Message = T;

    fn into_streaming_request(self) -> Request<S> {
        Request::new(self)
    }
}

impl<S, T> IntoStreamingRequest for Request<S>
where
    S: Stream<Item = T> + Send + 'static,
{
    type Stream = S;
    type Message = T;

    fn into_streaming_request(self) -> Self {
        self
    }
}
