//! Opening a connection from the shared arguments: transport options
//! (WebSocket headers, TLS), the `--debug` tap, SETUP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rsocket::frame::FrameType;
use rsocket::{
    open_transport, ClientBuilder, LeaseConfig, Requester, ResumeOptions, SetupParams,
    TransportOptions,
};

use crate::cli::ConnArgs;
use crate::debug::{FrameLog, SentFrames, Tap};
use crate::input::parse_header;

/// A connected client and the count of frames it has written.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) requester: Requester,
    pub(crate) sent: Arc<SentFrames>,
}

impl Client {
    /// Waits (at most [`CLOSE_WAIT`]) until `n` frames of type `t` are
    /// written, then closes gracefully and waits (as long again) for the
    /// end. Closing right after queueing a fire-and-forget or a CANCEL
    /// could otherwise end the connection before the frame is written.
    pub(crate) async fn close_after(&self, t: Option<(FrameType, u64)>) {
        if let Some((t, n)) = t {
            let _ = tokio::time::timeout(CLOSE_WAIT, self.sent.wait_for(t, n)).await;
        }
        self.requester.close();
        let _ = tokio::time::timeout(CLOSE_WAIT, self.requester.closed()).await;
    }
}

/// How long closing may take before the process exits anyway.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Connects to `uri` with `setup`; `--debug` logs the frames.
pub(crate) async fn connect(uri: &str, conn: &ConnArgs, setup: SetupParams) -> Result<Client> {
    let mut options = TransportOptions::default();
    for h in &conn.headers {
        let (name, value) = parse_header(h)?;
        options = options.header(name, value);
    }
    if uri.starts_with("wss://") {
        options = tls_options(options, conn)?;
    }
    let sent = Arc::new(SentFrames::default());
    let log = conn.debug.then(|| FrameLog::new("client"));
    let mut builder = ClientBuilder::new().setup(setup);
    if conn.lease {
        builder = builder.lease(LeaseConfig::new().wait(conn.lease_wait));
    }
    if conn.resume {
        // Every transport, the first and those after a loss, is opened the
        // same way and tapped into the same log and counters.
        let (target, sent_) = (uri.to_owned(), sent.clone());
        let requester = builder
            .resume(ResumeOptions::default())
            .connect_resumable(move || {
                let (target, options) = (target.clone(), options.clone());
                let (log, sent) = (log.clone(), sent_.clone());
                async move {
                    let transport = open_transport(&target, &options)
                        .await
                        .map_err(std::io::Error::other)?;
                    Ok(Tap::new(transport, log, sent))
                }
            })
            .await
            .with_context(|| format!("connecting to {uri}"))?;
        return Ok(Client { requester, sent });
    }
    let transport = open_transport(uri, &options)
        .await
        .with_context(|| format!("connecting to {uri}"))?;
    let requester = builder
        .connect(Tap::new(transport, log, sent.clone()))
        .context("starting the connection")?;
    Ok(Client { requester, sent })
}

#[cfg(feature = "tls")]
fn tls_options(options: TransportOptions, conn: &ConnArgs) -> Result<TransportOptions> {
    Ok(options.tls(tls::client_config(conn.ca_file.as_deref(), conn.insecure)?))
}

#[cfg(not(feature = "tls"))]
fn tls_options(_options: TransportOptions, _conn: &ConnArgs) -> Result<TransportOptions> {
    anyhow::bail!("wss:// needs the `tls` feature of rsocket-cli")
}

/// The rustls client configuration: system roots plus `--ca-file`, or no
/// verification at all with `--insecure`.
#[cfg(feature = "tls")]
pub(crate) mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use anyhow::{bail, Context as _, Result};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

    pub(crate) fn client_config(
        ca_file: Option<&Path>,
        insecure: bool,
    ) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        if insecure {
            return Ok(Arc::new(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                    .with_no_client_auth(),
            ));
        }
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        for cert in system.certs {
            // A system certificate rustls cannot parse is skipped, as
            // browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing {}", path.display()))?;
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("certificate in {}", path.display()))?;
            }
        }
        if roots.is_empty() {
            bail!("no trusted root certificates: give --ca-file (or --insecure for development)");
        }
        Ok(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        ))
    }

    /// Accepts any certificate; still checks the handshake signatures, so
    /// the peer must hold the key of the certificate it shows.
    #[derive(Debug)]
    struct AcceptAny(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
