//! The user-facing [`Payload`]: optional metadata plus data.

use bytes::Bytes;

/// One RSocket element: optional metadata and (possibly empty) data.
///
/// `metadata: None` means the frame carried no metadata (M flag clear);
/// `Some(Bytes::new())` means the M flag was set with a zero length. The two
/// are kept apart because peers treat them differently.
///
/// Both fields are [`Bytes`], so payloads decoded from the network are
/// slices of the receive buffer and cloning one is a reference-count bump.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload {
    /// Metadata, if the M flag was set.
    pub metadata: Option<Bytes>,
    /// Data; empty when the frame carried none.
    pub data: Bytes,
}

impl Payload {
    /// A payload with data and no metadata.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            metadata: None,
            data: data.into(),
        }
    }

    /// Sets the metadata (the M flag), keeping the data:
    /// `Payload::new(data).with_metadata(metadata)`.
    ///
    /// ```
    /// use rsocket_core::Payload;
    /// let p = Payload::new("data").with_metadata("meta");
    /// assert_eq!(p.data_utf8(), Some("data"));
    /// assert_eq!(p.metadata_utf8(), Some("meta"));
    /// ```
    #[must_use]
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// A payload with metadata and empty data.
    pub fn metadata_only(metadata: impl Into<Bytes>) -> Self {
        Self::default().with_metadata(metadata)
    }

    /// The data as UTF-8, if it is valid UTF-8.
    pub fn data_utf8(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }

    /// The metadata as UTF-8, if present and valid UTF-8.
    pub fn metadata_utf8(&self) -> Option<&str> {
        self.metadata
            .as_deref()
            .and_then(|m| std::str::from_utf8(m).ok())
    }

    /// Number of metadata plus data bytes.
    pub fn len(&self) -> usize {
        self.metadata.as_ref().map_or(0, Bytes::len) + self.data.len()
    }

    /// True when there is no metadata and no data.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_none() && self.data.is_empty()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Payload");
        if let Some(m) = &self.metadata {
            d.field("metadata", m);
        }
        d.field("data", &self.data).finish()
    }
}

impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Self {
        Self::new(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Self::new(b)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}
