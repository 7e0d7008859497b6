//! Call metadata ([`Metadata`]) and the two request metadata layouts the
//! server reads: composite metadata with a routing entry (what this crate
//! sends) and the rsocket-rpc-java version 1 header.

use std::fmt;
use std::mem::ManuallyDrop;

use bytes::{BufMut, Bytes, BytesMut};
use rsocket_core::metadata::{
    Authentication, CompositeEntry, CompositeMetadata, EntryMime, MetadataError, RoutingMetadata,
    Utf8Bytes, WellKnownMimeType,
};

/// Metadata of a call, a response or a stream: the composite metadata
/// entries that travel beside the message, in order, without the routing
/// entry (the library adds and removes that one).
///
/// Entries are keyed by MIME type; well-known types (for example
/// `message/x.rsocket.authentication.v0`) are written with their one-byte
/// id, any other name as a string of 1..=128 ASCII bytes.
///
/// ```
/// use rsocket_rpc::Metadata;
/// let mut md = Metadata::new();
/// md.insert("text/x.user", "alice")?;
/// md.set_bearer_token("secret")?;
/// assert_eq!(md.get_str("text/x.user"), Some("alice"));
/// assert_eq!(md.bearer_token().as_deref(), Some("secret"));
/// # Ok::<(), rsocket_core::metadata::MetadataError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    // Both fields are dropped by `Metadata`'s own `Drop`, which tests for
    // emptiness inline: most calls have no metadata, and the fields' drop
    // glue is a call each even when there is nothing to free.
    entries: ManuallyDrop<Vec<CompositeEntry>>,
    // Boxed: rare, and it would triple the size of every request's
    // metadata (and of every call's future that holds one).
    v1: ManuallyDrop<Option<Box<RpcV1Metadata>>>,
}

impl Drop for Metadata {
    #[inline]
    fn drop(&mut self) {
        if self.entries.capacity() != 0 {
            drop(std::mem::take(&mut *self.entries));
        }
        if self.v1.is_some() {
            drop(self.v1.take());
        }
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("entries", &*self.entries)
            .field("v1", &*self.v1)
            .finish()
    }
}

/// The parts of an rsocket-rpc-java version 1 metadata header that are not
/// the route, for calls that arrived in that layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcV1Metadata {
    /// The tracing bytes (rsocket-rpc-java's own encoding), possibly empty.
    pub tracing: Bytes,
    /// The user metadata after the header, possibly empty. When it parses as
    /// composite metadata its entries are also in the [`Metadata`].
    pub user: Bytes,
}

impl Metadata {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops it; when it holds nothing to free (the common case), without
    /// a call to its drop glue (forgetting an empty `Metadata` leaks
    /// nothing: it has no allocation).
    #[inline]
    pub(crate) fn discard(self) {
        if self.entries.capacity() == 0 && self.v1.is_none() {
            std::mem::forget(self);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &CompositeEntry> {
        self.entries.iter()
    }

    /// The content of the first entry of type `mime`.
    pub fn get(&self, mime: &str) -> Option<&Bytes> {
        self.entries
            .iter()
            .find(|e| e.mime.as_str() == Some(mime))
            .map(|e| &e.content)
    }

    /// The content of the first entry of type `mime`, if it is UTF-8.
    pub fn get_str(&self, mime: &str) -> Option<&str> {
        self.get(mime).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The contents of every entry of type `mime`, in order.
    pub fn get_all<'a>(&'a self, mime: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.mime.as_str() == Some(mime))
            .map(|e| &e.content)
    }

    /// The content of the first entry of a well-known type, whether the
    /// entry names it by its id or spells it out.
    pub fn get_well_known(&self, mime: WellKnownMimeType) -> Option<&Bytes> {
        self.entries
            .iter()
            .find(|e| is_type(&e.mime, mime))
            .map(|e| &e.content)
    }

    /// Replaces every entry of type `mime` with one entry holding `value`
    /// (appended at the end). Fails if `mime` is not 1..=128 ASCII bytes or
    /// `value` is longer than the 24-bit length field allows.
    pub fn insert(&mut self, mime: &str, value: impl Into<Bytes>) -> Result<(), MetadataError> {
        let entry = CompositeEntry::new(EntryMime::parse(mime)?, value);
        entry.validate()?;
        self.entries.retain(|e| e.mime.as_str() != Some(mime));
        self.entries.push(entry);
        Ok(())
    }

    /// Adds an entry, keeping the ones of the same type.
    pub fn append(&mut self, mime: &str, value: impl Into<Bytes>) -> Result<(), MetadataError> {
        self.push(CompositeEntry::new(EntryMime::parse(mime)?, value))
    }

    /// Adds an entry as it is (any MIME type, well-known or not).
    pub fn push(&mut self, entry: CompositeEntry) -> Result<(), MetadataError> {
        entry.validate()?;
        self.entries.push(entry);
        Ok(())
    }

    /// Removes every entry of type `mime`; returns the first one's content.
    pub fn remove(&mut self, mime: &str) -> Option<Bytes> {
        let mut first = None;
        self.entries.retain_mut(|e| {
            if e.mime.as_str() == Some(mime) {
                if first.is_none() {
                    first = Some(std::mem::take(&mut e.content));
                }
                false
            } else {
                true
            }
        });
        first
    }

    /// The authentication entry (`message/x.rsocket.authentication.v0`),
    /// decoded. `None` when absent or malformed.
    pub fn authentication(&self) -> Option<Authentication> {
        let raw = self.get_well_known(WellKnownMimeType::MessageRSocketAuthentication)?;
        Authentication::decode(raw.clone()).ok()
    }

    /// The bearer token of the authentication entry, if it has one.
    pub fn bearer_token(&self) -> Option<String> {
        match self.authentication()? {
            Authentication::Bearer { token } => Some(token.as_str().to_owned()),
            _ => None,
        }
    }

    /// Sets the authentication entry, replacing any previous one.
    pub fn set_authentication(&mut self, auth: &Authentication) -> Result<(), MetadataError> {
        let content = auth.encode()?;
        let mime = WellKnownMimeType::MessageRSocketAuthentication;
        self.entries.retain(|e| !is_type(&e.mime, mime));
        self.push(CompositeEntry::new(mime, content))
    }

    /// Sets a bearer token in the authentication entry.
    pub fn set_bearer_token(&mut self, token: &str) -> Result<(), MetadataError> {
        self.set_authentication(&Authentication::bearer(token))
    }

    /// For a call that arrived in the rsocket-rpc-java version 1 layout,
    /// its tracing bytes and raw user metadata.
    pub fn rsocket_rpc_v1(&self) -> Option<&RpcV1Metadata> {
        self.v1.as_deref()
    }

    /// The metadata of a request frame for `route`, as clients send it:
    /// composite metadata with a routing entry holding the single tag
    /// `route` (`package.Service/Method`), then these entries. Useful for
    /// calling an RPC service with a raw `RSocket`.
    pub fn encode_request(&self, route: &str) -> Result<Bytes, MetadataError> {
        self.encode(Some(route))
    }

    /// Encoded length as composite metadata, with a routing entry for
    /// `route` when given.
    pub(crate) fn encoded_len(&self, route: Option<&str>) -> usize {
        let routing = route.map_or(0, |r| 1 + 3 + 1 + r.len());
        routing
            + self
                .entries
                .iter()
                .map(CompositeEntry::encoded_len)
                .sum::<usize>()
    }

    /// Composite metadata: a routing entry with the single tag `route`
    /// first (when given), then the entries. Entries were validated when
    /// added; only the route can fail (empty, NUL, or over 255 bytes).
    pub(crate) fn encode(&self, route: Option<&str>) -> Result<Bytes, MetadataError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len(route));
        self.encode_into(route, &mut buf)?;
        Ok(buf.freeze())
    }

    /// A request's metadata and message in one allocation: the metadata
    /// encoded with the route, then the message, split into two `Bytes`.
    pub(crate) fn encode_with_message<M: prost::Message>(
        &self,
        route: &str,
        message: &M,
    ) -> Result<(Bytes, Bytes), MetadataError> {
        let meta_len = self.encoded_len(Some(route));
        let mut buf = BytesMut::with_capacity(meta_len + message.encoded_len());
        self.encode_into(Some(route), &mut buf)?;
        let metadata = buf.split().freeze();
        crate::codec::encode_into(message, &mut buf);
        Ok((metadata, buf.freeze()))
    }

    pub(crate) fn encode_into<B: BufMut>(
        &self,
        route: Option<&str>,
        buf: &mut B,
    ) -> Result<(), MetadataError> {
        if let Some(route) = route {
            RoutingMetadata::check_tag(route)?;
            // check_tag bounds the route to 255 bytes, so the entry's
            // 24-bit length and the tag's 8-bit length both fit.
            let [_, l1, l2, l3] = u32::try_from(1 + route.len()).unwrap_or(0).to_be_bytes();
            let mime = WellKnownMimeType::MessageRSocketRouting.header_byte();
            let tag_len = u8::try_from(route.len()).unwrap_or(0);
            buf.put_slice(&[mime, l1, l2, l3, tag_len]);
            buf.put_slice(route.as_bytes());
        }
        for e in self.entries.iter() {
            e.encode_into(buf)?;
        }
        Ok(())
    }

    /// The metadata of a response or stream payload: `None` (no M flag)
    /// when there are no entries.
    #[inline]
    pub(crate) fn encode_response(&self) -> Result<Option<Bytes>, MetadataError> {
        if self.entries.is_empty() {
            Ok(None)
        } else {
            self.encode(None).map(Some)
        }
    }

    /// Reads response metadata leniently: the entries before a malformed
    /// one are kept (a peer's bad metadata must not fail a call that
    /// otherwise succeeded).
    #[inline]
    pub(crate) fn decode_lenient(bytes: Option<&Bytes>) -> Self {
        match bytes {
            None => Self::default(),
            Some(bytes) => Self::decode_entries(bytes),
        }
    }

    fn decode_entries(bytes: &Bytes) -> Self {
        let mut entries = Vec::new();
        for e in CompositeMetadata::new(bytes.clone()).iter() {
            match e {
                Ok(e) => entries.push(e),
                Err(err) => {
                    tracing::debug!(error = %err, "ignoring malformed response metadata");
                    break;
                }
            }
        }
        Self {
            entries: ManuallyDrop::new(entries),
            v1: ManuallyDrop::new(None),
        }
    }
}

/// Whether an entry's type is the well-known `mime`, named by its id or
/// spelled out as a string (composite metadata allows both).
fn is_type(entry: &EntryMime, mime: WellKnownMimeType) -> bool {
    match entry {
        EntryMime::WellKnown(m) => *m == mime,
        EntryMime::Custom(c) => c.as_str() == mime.as_str(),
        EntryMime::UnknownReserved(_) => false,
    }
}

/// The route of request metadata that is exactly one composite entry, a
/// routing entry with one tag: what this crate's clients send for a call
/// without metadata of its own. Borrowed, nothing allocated or validated
/// beyond the lengths; anything else (more entries or tags, the
/// rsocket-rpc-java header, malformed input) gives `None` and is left to
/// [`parse_request`], which reads it the same way when it is this shape.
#[inline]
pub(crate) fn sole_route(bytes: &[u8]) -> Option<&[u8]> {
    // Evaluated at compile time: the call is not inlined across crates.
    const ROUTING: u8 = WellKnownMimeType::MessageRSocketRouting.header_byte();
    let (&mime, rest) = bytes.split_first()?;
    if mime != ROUTING {
        return None;
    }
    let (len, entry) = rest.split_first_chunk::<3>()?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    let (&tag_len, tag) = entry.split_first()?;
    (entry.len() == len && tag.len() == usize::from(tag_len) && !tag.is_empty()).then_some(tag)
}

/// Which metadata layout a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Composite metadata with a routing entry (this crate's format).
    Composite,
    /// The rsocket-rpc-java version 1 header.
    RpcV1,
}

/// A request's route and metadata, as the server reads them.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// `package.Service/Method` (composite layout: the first routing tag).
    pub(crate) route: RouteKey,
    pub(crate) metadata: Metadata,
    pub(crate) layout: Layout,
}

/// A route as received: a zero-copy view of the routing tag, or the
/// joined service and method of an rsocket-rpc-java header.
#[derive(Debug)]
pub(crate) enum RouteKey {
    Tag(Utf8Bytes),
    Joined(String),
}

impl RouteKey {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Tag(t) => t.as_str(),
            Self::Joined(s) => s,
        }
    }
}

/// Why a request's metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The request carried no metadata at all.
    #[error("the request has no metadata, so no route")]
    NoMetadata,
    /// Composite metadata without a routing entry, or one with no tag.
    #[error("the request metadata has no routing entry")]
    NoRoute,
    /// Metadata that is neither valid composite metadata nor an
    /// rsocket-rpc-java header.
    #[error("malformed request metadata: {0}")]
    Malformed(#[from] MetadataError),
    /// A field of an rsocket-rpc-java header is longer than its 16-bit
    /// length allows.
    #[error("{what} is {len} bytes, the rsocket-rpc-java header allows 65535")]
    FieldTooLong {
        /// The field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// Version number of the rsocket-rpc-java metadata header.
const RPC_V1_VERSION: u16 = 1;

/// Reads a request's metadata in either layout (see the crate docs).
pub(crate) fn parse_request(metadata: Option<&Bytes>) -> Result<Inbound, RouteError> {
    let bytes = metadata.ok_or(RouteError::NoMetadata)?;
    if let Some(v1) = parse_rpc_v1(bytes) {
        return Ok(v1);
    }
    let mut route = None;
    let mut entries = Vec::new();
    for entry in CompositeMetadata::new(bytes.clone()).iter() {
        let entry = entry?;
        if route.is_none() && is_type(&entry.mime, WellKnownMimeType::MessageRSocketRouting) {
            let first = RoutingMetadata::new(entry.content).iter().next();
            match first {
                Some(tag) => route = Some(tag?),
                None => return Err(RouteError::NoRoute),
            }
        } else {
            entries.push(entry);
        }
    }
    let route = route.ok_or(RouteError::NoRoute)?;
    Ok(Inbound {
        route: RouteKey::Tag(route),
        metadata: Metadata {
            entries: ManuallyDrop::new(entries),
            v1: ManuallyDrop::new(None),
        },
        layout: Layout::Composite,
    })
}

/// The rsocket-rpc-java version 1 header, all integers big-endian:
/// `u16 version (= 1)`, `u16 length` + service name, `u16 length` + method
/// name, `u16 length` + tracing bytes, then user metadata to the end.
/// Returns `None` unless the whole header is present and the names are
/// UTF-8, so that composite metadata is never misread as this layout.
fn parse_rpc_v1(bytes: &Bytes) -> Option<Inbound> {
    fn field(bytes: &Bytes, pos: &mut usize) -> Option<Bytes> {
        let len_end = pos.checked_add(2)?;
        let len = bytes.get(*pos..len_end)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let end = len_end.checked_add(len)?;
        if end > bytes.len() {
            return None;
        }
        *pos = end;
        Some(bytes.slice(len_end..end))
    }
    let version = bytes.get(0..2)?;
    if u16::from_be_bytes([version[0], version[1]]) != RPC_V1_VERSION {
        return None;
    }
    let mut pos = 2;
    let service = field(bytes, &mut pos)?;
    let method = field(bytes, &mut pos)?;
    let tracing = field(bytes, &mut pos)?;
    let service = std::str::from_utf8(&service).ok()?;
    let method = std::str::from_utf8(&method).ok()?;
    let user = bytes.slice(pos..);
    let entries = CompositeMetadata::new(user.clone())
        .to_vec()
        .unwrap_or_default();
    Some(Inbound {
        route: RouteKey::Joined(format!("{service}/{method}")),
        metadata: Metadata {
            entries: ManuallyDrop::new(entries),
            v1: ManuallyDrop::new(Some(Box::new(RpcV1Metadata { tracing, user }))),
        },
        layout: Layout::RpcV1,
    })
}

/// Encodes an rsocket-rpc-java version 1 header; for tests and for callers
/// that must talk to rsocket-rpc-java servers by hand.
pub fn encode_rpc_v1(
    service: &str,
    method: &str,
    tracing: &[u8],
    user: &[u8],
) -> Result<Bytes, RouteError> {
    let mut buf = BytesMut::new();
    buf.put_u16(RPC_V1_VERSION);
    for (what, part) in [
        ("service name", service.as_bytes()),
        ("method name", method.as_bytes()),
        ("tracing", tracing),
    ] {
        let len = u16::try_from(part.len()).map_err(|_| RouteError::FieldTooLong {
            what,
            len: part.len(),
        })?;
        buf.put_u16(len);
        buf.put_slice(part);
    }
    buf.put_slice(user);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let digits: Vec<u8> = s
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        Bytes::from(digits)
    }

    #[test]
    fn composite_with_routing_and_user_entries() {
        // routing "a.B/C", then custom "x/y" = "ab"
        let md = hex("fe 00 00 06 05 61 2e 42 2f 43 02 78 2f 79 00 00 02 61 62");
        let inbound = parse_request(Some(&md)).unwrap();
        assert_eq!(inbound.route.as_str(), "a.B/C");
        assert_eq!(inbound.layout, Layout::Composite);
        assert_eq!(inbound.metadata.get_str("x/y"), Some("ab"));
        assert_eq!(inbound.metadata.len(), 1);
    }

    #[test]
    fn encode_matches_parse() {
        let mut md = Metadata::new();
        md.insert("x/y", "ab").unwrap();
        let bytes = md.encode(Some("a.B/C")).unwrap();
        assert_eq!(
            bytes,
            hex("fe 00 00 06 05 61 2e 42 2f 43 02 78 2f 79 00 00 02 61 62")
        );
        assert_eq!(bytes.len(), md.encoded_len(Some("a.B/C")));
    }

    #[test]
    fn sole_route_agrees_with_the_full_parse() {
        let alone = Metadata::new().encode_request("a.B/C").unwrap();
        assert_eq!(sole_route(&alone), Some(&b"a.B/C"[..]));
        let full = parse_request(Some(&alone)).unwrap();
        assert_eq!(full.route.as_str(), "a.B/C");
        assert!(full.metadata.is_empty());

        // Another entry after the route, two tags, a different first
        // entry, truncation: all left to the full parse.
        let mut md = Metadata::new();
        md.set_bearer_token("t").unwrap();
        let with_token = md.encode_request("a.B/C").unwrap();
        assert_eq!(sole_route(&with_token), None);
        assert_eq!(parse_request(Some(&with_token)).unwrap().metadata.len(), 1);
        let two_tags = hex("fe 00 00 06 01 61 03 62 2f 63");
        assert_eq!(sole_route(&two_tags), None);
        assert_eq!(parse_request(Some(&two_tags)).unwrap().route.as_str(), "a");
        assert_eq!(sole_route(&hex("fe 00 00 06 05 61 2e 42 2f")), None);
        assert_eq!(sole_route(&hex("fe 00 00 01 00")), None);
        assert_eq!(sole_route(&hex("fd 00 00 02 01 61")), None);
        assert_eq!(sole_route(&hex("fe 00 00")), None);
        assert_eq!(sole_route(&[]), None);
    }

    #[test]
    fn rpc_v1_header() {
        // version 1, service "a.B", method "C", tracing "t", user metadata
        // = composite custom "x/y" = "ab"
        let md = hex("00 01 00 03 61 2e 42 00 01 43 00 01 74 02 78 2f 79 00 00 02 61 62");
        let inbound = parse_request(Some(&md)).unwrap();
        assert_eq!(inbound.layout, Layout::RpcV1);
        assert_eq!(inbound.route.as_str(), "a.B/C");
        let v1 = inbound.metadata.rsocket_rpc_v1().unwrap();
        assert_eq!(v1.tracing, "t");
        assert_eq!(v1.user, hex("02 78 2f 79 00 00 02 61 62"));
        assert_eq!(inbound.metadata.get_str("x/y"), Some("ab"));
        assert_eq!(
            encode_rpc_v1("a.B", "C", b"t", &hex("02 78 2f 79 00 00 02 61 62")).unwrap(),
            md
        );
    }

    #[test]
    fn rpc_v1_with_opaque_user_metadata_and_no_tracing() {
        let md = hex("00 01 00 01 53 00 01 4d 00 00 ff ff");
        let inbound = parse_request(Some(&md)).unwrap();
        assert_eq!(inbound.route.as_str(), "S/M");
        assert!(inbound.metadata.is_empty());
        assert_eq!(
            inbound.metadata.rsocket_rpc_v1().unwrap().user,
            hex("ff ff")
        );
    }

    #[test]
    fn truncated_rpc_v1_is_not_misread() {
        // Claims a 5-byte service name but has 1 byte: not v1, and as
        // composite it is malformed too.
        let md = hex("00 01 00 05 61");
        assert!(matches!(
            parse_request(Some(&md)),
            Err(RouteError::Malformed(_))
        ));
    }

    #[test]
    fn rpc_v1_needs_utf8_names() {
        // Fields that fit, but the service name is the byte ff.
        let md = hex("00 01 00 01 ff 00 01 4d 00 00");
        let read_as_v1 = matches!(parse_request(Some(&md)), Ok(i) if i.layout == Layout::RpcV1);
        assert!(!read_as_v1);
        let md = hex("00 01 00 01 53 00 02 4d ff 00 00");
        let read_as_v1 = matches!(parse_request(Some(&md)), Ok(i) if i.layout == Layout::RpcV1);
        assert!(!read_as_v1);
    }

    /// Composite metadata may spell a well-known MIME type out as a
    /// string instead of its one-byte id: the routing entry and the
    /// authentication entry are still recognised.
    #[test]
    fn well_known_types_spelled_out() {
        let routing = WellKnownMimeType::MessageRSocketRouting.as_str();
        let auth = WellKnownMimeType::MessageRSocketAuthentication;
        let mut md = Metadata::new();
        md.push(CompositeEntry::new(
            EntryMime::custom(routing).unwrap(),
            RoutingMetadata::encode(["a.B/C"]).unwrap(),
        ))
        .unwrap();
        md.push(CompositeEntry::new(
            EntryMime::custom(auth.as_str()).unwrap(),
            Authentication::bearer("t").encode().unwrap(),
        ))
        .unwrap();
        let wire = md.encode(None).unwrap();
        let inbound = parse_request(Some(&wire)).unwrap();
        assert_eq!(inbound.route.as_str(), "a.B/C");
        assert_eq!(inbound.metadata.len(), 1);
        assert_eq!(inbound.metadata.bearer_token().as_deref(), Some("t"));
        assert!(inbound.metadata.get_well_known(auth).is_some());
        // Setting a token replaces the spelled-out entry.
        let mut back = inbound.metadata;
        back.set_bearer_token("u").unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.bearer_token().as_deref(), Some("u"));
    }

    #[test]
    fn missing_route() {
        assert_eq!(parse_request(None).unwrap_err(), RouteError::NoMetadata);
        let md = hex("02 78 2f 79 00 00 02 61 62");
        assert_eq!(parse_request(Some(&md)).unwrap_err(), RouteError::NoRoute);
        let empty_routing = hex("fe 00 00 00");
        assert_eq!(
            parse_request(Some(&empty_routing)).unwrap_err(),
            RouteError::NoRoute
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..64 {
            for _ in 0..64 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        (seed >> 24) as u8
                    })
                    .collect();
                let _ = parse_request(Some(&Bytes::from(bytes)));
            }
        }
    }

    #[test]
    fn insert_replaces_and_remove_takes() {
        let mut md = Metadata::new();
        md.append("x/a", "1").unwrap();
        md.append("x/a", "2").unwrap();
        assert_eq!(md.get_all("x/a").count(), 2);
        md.insert("x/a", "3").unwrap();
        assert_eq!(md.get_all("x/a").collect::<Vec<_>>(), ["3"]);
        assert_eq!(md.remove("x/a").as_deref(), Some(&b"3"[..]));
        assert!(md.is_empty());
        assert!(md.insert("", "x").is_err());
    }

    #[test]
    fn entries_freed_when_dropped_or_discarded() {
        struct Owner(std::sync::Arc<[u8; 2]>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.0[..]
            }
        }
        let owner = std::sync::Arc::new(*b"ab");
        for discard in [false, true] {
            let mut md = Metadata::new();
            md.insert("x/y", Bytes::from_owner(Owner(owner.clone())))
                .unwrap();
            assert_eq!(std::sync::Arc::strong_count(&owner), 2);
            if discard {
                md.discard();
            } else {
                drop(md);
            }
            assert_eq!(std::sync::Arc::strong_count(&owner), 1);
        }
        // The rsocket-rpc-java header's parts are freed too.
        let user = Bytes::from_owner(Owner(owner.clone()));
        let md = Metadata {
            v1: ManuallyDrop::new(Some(Box::new(RpcV1Metadata {
                tracing: Bytes::new(),
                user,
            }))),
            entries: ManuallyDrop::new(Vec::new()),
        };
        assert_eq!(std::sync::Arc::strong_count(&owner), 2);
        md.discard();
        assert_eq!(std::sync::Arc::strong_count(&owner), 1);
        assert_eq!(
            format!("{:?}", Metadata::new()),
            "Metadata { entries: [], v1: None }"
        );
    }

    #[test]
    fn bearer_token_round_trip() {
        let mut md = Metadata::new();
        md.set_bearer_token("t1").unwrap();
        md.set_bearer_token("t2").unwrap();
        assert_eq!(md.len(), 1);
        assert_eq!(md.bearer_token().as_deref(), Some("t2"));
        let wire = md.encode(Some("a/b")).unwrap();
        let back = parse_request(Some(&wire)).unwrap();
        assert_eq!(back.metadata.bearer_token().as_deref(), Some("t2"));
    }

    #[test]
    fn response_metadata_lenient() {
        let good_then_bad = hex("02 78 2f 79 00 00 02 61 62 02 78");
        let md = Metadata::decode_lenient(Some(&good_then_bad));
        assert_eq!(md.get_str("x/y"), Some("ab"));
        assert!(Metadata::decode_lenient(None).is_empty());
        assert_eq!(Metadata::new().encode_response().unwrap(), None);
    }
}
