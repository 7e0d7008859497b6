//! Turning arguments into bytes: `--data` sources, request metadata
//! (composite with routing and authentication, or raw), SETUP parameters.

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use rsocket::metadata::{
    Authentication, CompositeMetadata, EntryMime, RoutingMetadata, WellKnownMimeType,
};
use rsocket::{MimeType, Payload, SetupParams};

use crate::cli::{ConnArgs, MimeArgs};

/// Reads a value given as text, `@file` or `-` (all of standard input).
pub(crate) async fn read_value(arg: &str) -> Result<Bytes> {
    if arg == "-" {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .context("reading standard input")?;
        Ok(Bytes::from(buf))
    } else if let Some(path) = arg.strip_prefix('@') {
        let buf = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {path}"))?;
        Ok(Bytes::from(buf))
    } else {
        Ok(Bytes::copy_from_slice(arg.as_bytes()))
    }
}

/// Reads an optional value.
pub(crate) async fn read_opt(arg: Option<&str>) -> Result<Option<Bytes>> {
    match arg {
        Some(a) => Ok(Some(read_value(a).await?)),
        None => Ok(None),
    }
}

/// Parses `--auth`: `bearer:TOKEN` or `simple:USER:PASSWORD`.
pub(crate) fn parse_auth(s: &str) -> Result<Authentication> {
    let (scheme, rest) = s.split_once(':').with_context(|| {
        format!("invalid --auth {s:?}: expected bearer:TOKEN or simple:USER:PASSWORD")
    })?;
    match scheme {
        "bearer" => Ok(Authentication::bearer(rest.to_owned())),
        "simple" => {
            let (user, password) = rest
                .split_once(':')
                .context("invalid --auth: expected simple:USER:PASSWORD")?;
            Ok(Authentication::simple(user.to_owned(), password.to_owned()))
        }
        other => bail!("unknown --auth scheme {other:?}: use bearer or simple"),
    }
}

/// How request metadata is built.
#[derive(Debug, Clone)]
pub(crate) struct MetadataPlan {
    /// The encoded metadata of each request (`None`: no metadata).
    pub(crate) request: Option<Bytes>,
    /// The SETUP metadata MIME type.
    pub(crate) setup_mime: MimeType,
}

fn is_composite(mime: &str) -> bool {
    mime == WellKnownMimeType::MessageRSocketCompositeMetadata.as_str()
}

/// Builds the request metadata: raw `metadata` typed by `metadata_mime`, or
/// composite (routing, authentication, then `metadata` as an entry of type
/// `metadata_mime`) when a route or authentication is given or
/// `metadata_mime` is itself composite (then `metadata` is appended as is).
pub(crate) fn plan_metadata(
    route: Option<&str>,
    auth: Option<&Authentication>,
    metadata: Option<Bytes>,
    metadata_mime: &str,
) -> Result<MetadataPlan> {
    let composite = route.is_some() || auth.is_some() || is_composite(metadata_mime);
    if !composite {
        let setup_mime = MimeType::new(metadata_mime.to_owned())
            .with_context(|| format!("invalid --metadata-mime {metadata_mime:?}"))?;
        return Ok(MetadataPlan {
            request: metadata,
            setup_mime,
        });
    }
    let mut builder = CompositeMetadata::builder();
    if let Some(route) = route {
        let tag = RoutingMetadata::encode([route]).context("invalid --route")?;
        builder.push_well_known(WellKnownMimeType::MessageRSocketRouting, tag)?;
    }
    if let Some(auth) = auth {
        let bytes = auth.encode().context("invalid --auth")?;
        builder.push_well_known(WellKnownMimeType::MessageRSocketAuthentication, bytes)?;
    }
    let mut out = builder.build().to_vec();
    if let Some(md) = metadata {
        if is_composite(metadata_mime) {
            out.extend_from_slice(&md);
        } else {
            let mime = EntryMime::parse(metadata_mime)
                .with_context(|| format!("invalid --metadata-mime {metadata_mime:?}"))?;
            let mut entry = CompositeMetadata::builder();
            entry.push(mime, md).context("metadata entry")?;
            out.extend_from_slice(&entry.build());
        }
    }
    Ok(MetadataPlan {
        request: (!out.is_empty()).then(|| Bytes::from(out)),
        setup_mime: MimeType::COMPOSITE_METADATA,
    })
}

/// A payload with the planned metadata.
pub(crate) fn payload(data: Bytes, plan: &MetadataPlan) -> Payload {
    Payload {
        metadata: plan.request.clone(),
        data,
    }
}

/// SETUP parameters from the connection arguments.
pub(crate) async fn setup_params(
    conn: &ConnArgs,
    mime: &MimeArgs,
    metadata_mime: MimeType,
) -> Result<SetupParams> {
    let data_mime = MimeType::new(mime.data_mime.clone())
        .with_context(|| format!("invalid --data-mime {:?}", mime.data_mime))?;
    if conn.keepalive.is_zero() || conn.lifetime.is_zero() {
        bail!("--keepalive and --lifetime must be greater than zero");
    }
    // SETUP carries them as 31-bit milliseconds.
    let max = std::time::Duration::from_millis(0x7FFF_FFFF);
    if conn.keepalive > max || conn.lifetime > max {
        bail!("--keepalive and --lifetime can be at most 2147483647ms (about 24.8 days)");
    }
    Ok(SetupParams {
        metadata_mime_type: metadata_mime,
        data_mime_type: data_mime,
        keepalive_interval: conn.keepalive,
        max_lifetime: conn.lifetime,
        payload: Payload {
            metadata: read_opt(conn.setup_metadata.as_deref()).await?,
            data: read_opt(conn.setup_data.as_deref())
                .await?
                .unwrap_or_default(),
        },
    })
}

/// Splits `Name: value` (or `Name=value`).
pub(crate) fn parse_header(h: &str) -> Result<(String, String)> {
    let (name, value) = h
        .split_once(':')
        .or_else(|| h.split_once('='))
        .with_context(|| format!("invalid --header {h:?}: expected \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() {
        bail!("invalid --header {h:?}: empty name");
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse_auth("bearer:t0k").unwrap(),
            Authentication::bearer("t0k")
        );
        assert_eq!(
            parse_auth("simple:al:pa:ss").unwrap(),
            Authentication::simple("al", "pa:ss")
        );
        assert!(parse_auth("simple:nopass").is_err());
        assert!(parse_auth("digest:x").is_err());
        assert!(parse_auth("bearer").is_err());
    }

    #[test]
    fn raw_metadata_without_route() {
        let plan = plan_metadata(None, None, Some(Bytes::from("m")), "text/plain").unwrap();
        assert_eq!(plan.request.as_deref(), Some(&b"m"[..]));
        assert_eq!(plan.setup_mime.as_str(), Some("text/plain"));
    }

    #[test]
    fn composite_with_route_auth_and_entry() {
        let auth = Authentication::bearer("tok");
        let plan = plan_metadata(
            Some("echo"),
            Some(&auth),
            Some(Bytes::from("hi")),
            "text/plain",
        )
        .unwrap();
        let md = CompositeMetadata::new(plan.request.unwrap());
        let entries = md.to_vec().unwrap();
        assert_eq!(entries.len(), 3);
        let route = md
            .find(WellKnownMimeType::MessageRSocketRouting)
            .unwrap()
            .unwrap();
        assert_eq!(
            RoutingMetadata::new(route).to_vec().unwrap()[0].as_str(),
            "echo"
        );
        assert_eq!(entries[2].mime.as_str(), Some("text/plain"));
        assert_eq!(&entries[2].content[..], b"hi");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(plan_metadata(Some(""), None, None, "text/plain").is_err());
        assert!(plan_metadata(Some("r"), None, Some(Bytes::from("x")), "é").is_err());
        assert!(plan_metadata(None, None, None, "é").is_err());
        assert!(parse_header("nocolon").is_err());
        assert_eq!(
            parse_header("X-Token: abc").unwrap(),
            ("X-Token".to_owned(), "abc".to_owned())
        );
    }
}
