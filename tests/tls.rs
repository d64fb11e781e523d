//! TLS on the real server, with certificates made by the test (rcgen): HTTPS (HTTP/1.1 and HTTP/2 by ALPN) and gRPC
//! over TLS serve inference; plain HTTP and plaintext gRPC sent to the TLS ports are refused cleanly while the server
//! keeps serving; mutual TLS refuses clients without a certificate or with one from another CA; replaced certificate
//! files are picked up by new connections without a restart, and a broken replacement keeps the previous certificate;
//! bad files stop the start with a message naming the key.

use bytes::Bytes;
use crate::common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sluice::config::{ClientAuth, Config, TlsConfig};
use sluice::protocol::grpc::pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------------------------------

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for localhost and 127.0.0.1.
    fn server(&self, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, format!("sluice test server {serial}"));
        params.serial_number = Some(serial.into());
        self.sign(params)
    }

    fn client(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone(), key_der: key.serialize_der() }
    }
}

/// The server's files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file the way `kubectl`/cert-manager updates do not, but an admin's `cp` does: in place.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn server(&self, leaf: &Leaf) {
        self.write("server.pem", &leaf.cert_pem);
        self.write("server.key", &leaf.key_pem);
    }

    fn tls(&self, client_ca: Option<&Path>, client_auth: Option<ClientAuth>) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.map(Path::to_path_buf),
            client_auth,
            reload_interval: Duration::from_millis(100),
            ..TlsConfig::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------------------------------

fn client_config(ca: &Ca, identity: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der.clone()], PrivateKeyDer::try_from(leaf.key_der.clone()).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(Duration::from_secs(10), connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake: no answer within 10 s"))?
}

fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("the server showed a certificate")[0].clone().into_owned()
}

fn infer_body() -> Bytes {
    Bytes::from(json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}).to_string())
}

/// One HTTPS request over a new connection (HTTP/2 when `h2`): the status and body, or why it failed.
async fn https(addr: SocketAddr, config: Arc<rustls::ClientConfig>, path: &str, body: Option<Bytes>) -> Result<(StatusCode, Bytes), String> {
    let stream = tls_connect(addr, config).await.map_err(|e| format!("handshake: {e}"))?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    // HTTP/2 takes the authority from the URI; HTTP/1.1 from the Host header.
    let uri = if h2 { format!("https://localhost{path}") } else { path.to_string() };
    let request = match body {
        Some(body) => Request::post(uri).header("content-type", "application/json").header("host", "localhost").body(Full::new(body)),
        None => Request::get(uri).header("host", "localhost").body(Full::new(Bytes::new())),
    }
    .unwrap();
    let fut = async {
        let response = if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.map_err(|e| format!("h2: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(|e| format!("request: {e}"))?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("h1: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(|e| format!("request: {e}"))?
        };
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(20), fut).await.map_err(|_| "no answer within 20 s".to_string())?
}

/// A gRPC channel over TLS (ALPN h2) through tonic's custom-connector hook.
async fn grpc_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<tonic::transport::Channel, String> {
    let connector = tower::service_fn(move |_: hyper::Uri| {
        let config = config.clone();
        async move { tls_connect(addr, config).await.map(TokioIo::new) }
    });
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", addr.port())).unwrap();
    tokio::time::timeout(Duration::from_secs(10), endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| "gRPC connect: no answer within 10 s".to_string())?
        .map_err(|e| format!("gRPC connect: {e:?}"))
}

async fn grpc_infer(channel: tonic::transport::Channel) -> Result<Vec<u8>, tonic::Status> {
    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let data: Vec<u8> = (1..=8).flat_map(|v| (v as f32).to_le_bytes()).collect();
    let request = pb::ModelInferRequest {
        model_name: "fixed_affine".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor { name: "x".into(), datatype: "FP32".into(), shape: vec![8], ..Default::default() }],
        raw_input_contents: vec![Bytes::from(data)],
        ..Default::default()
    };
    let response = tokio::time::timeout(Duration::from_secs(20), client.model_infer(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("test: no answer within 20 s"))??;
    Ok(response.into_inner().raw_output_contents[0].to_vec())
}

async fn start_tls(tls: TlsConfig, admin_tls: Option<TlsConfig>) -> Server {
    let repo = TempRepo::new().link("fixed_affine");
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    config.server.tls = Some(tls);
    config.admin.tls = admin_tls;
    start_with(config, Some(repo)).await
}

/// A counter's value on the admin port's /metrics (0 when absent), read over `admin`'s scheme.
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_http2_and_grpc_over_tls_serve_and_plaintext_is_refused_cleanly() {
    let ca = Ca::new("sluice test CA");
    let files = Files::new();
    let leaf = ca.server(1);
    files.server(&leaf);
    let server = start_tls(files.tls(None, None), Some(files.tls(None, None))).await;
    let h1 = client_config(&ca, None, &[b"http/1.1"]);
    let h2 = client_config(&ca, None, &[b"h2", b"http/1.1"]);

    // HTTPS, HTTP/1.1 and HTTP/2 (ALPN), with the server's certificate.
    let stream = tls_connect(server.addr, h2.clone()).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the HTTP port offers h2 in ALPN");
    assert_eq!(peer_cert(&stream), leaf.der);
    drop(stream);
    let mut answers = Vec::new();
    for config in [h1.clone(), h2.clone()] {
        let (status, body) = https(server.addr, config, "/v2/models/fixed_affine/infer", Some(infer_body())).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        answers.push(v["outputs"][0]["data"].clone());
    }
    assert_eq!(answers[0], answers[1], "HTTP/1.1 and HTTP/2 give the same answer");

    // gRPC over TLS: the same numbers.
    let channel = grpc_tls(server.grpc_addr, client_config(&ca, None, &[b"h2"])).await.unwrap();
    let raw = grpc_infer(channel).await.unwrap();
    let grpc: Vec<f64> = raw.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
    let http: Vec<f64> = answers[0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32 as f64).collect();
    assert_eq!(grpc, http);

    // Plain HTTP to the HTTPS port: a 400 that says why, not a TLS alert; then the port still serves HTTPS.
    let started = Instant::now();
    let r = raw_http(server.addr, format!("GET /v2/health/ready HTTP/1.1\r\nhost: {}\r\n\r\n", server.addr).as_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("HTTPS"), "{}", r.error());
    assert!(started.elapsed() < Duration::from_secs(2), "answered in {:?}", started.elapsed());
    // Plaintext gRPC (a client without TLS) to the TLS gRPC port fails, and does not hang.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let plain_result = match tokio::time::timeout(Duration::from_secs(10), plain.connect()).await.expect("a plaintext gRPC client is refused, not left hanging") {
        Ok(channel) => grpc_infer(channel).await.map(|_| ()).map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(plain_result.is_err(), "plaintext gRPC was served on the TLS port");
    assert!(started.elapsed() < Duration::from_secs(5), "refused in {:?}", started.elapsed());
    // A TLS client that does not trust the server's CA fails its handshake (client side), and the server goes on.
    let other = Ca::new("another CA");
    assert!(tls_connect(server.addr, client_config(&other, None, &[b"http/1.1"])).await.is_err());
    let (status, _) = https(server.addr, h1.clone(), "/v2/health/ready", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // The admin port over TLS ([admin.tls]); the refusals above are counted.
    let admin = server.admin_addr.unwrap();
    let (status, text) = https(admin, h1, "/metrics", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"http\",reason=\"not_tls\"}") >= 1.0, "{text}");
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"grpc\",reason=\"not_tls\"}") >= 1.0, "{text}");
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"http\",reason=\"tls_handshake\"}") >= 1.0, "{text}");
    assert!(text.contains("sluice_connections_open{listener=\"http\"}"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let ca = Ca::new("sluice test CA");
    let clients = Ca::new("client CA");
    let stranger = Ca::new("a stranger's CA");
    let files = Files::new();
    files.server(&ca.server(1));
    let client_ca = files.write("clients.pem", &clients.pem());
    let server = start_tls(files.tls(Some(&client_ca), None), None).await;
    let good = clients.client("tenant-a");
    let forged = stranger.client("tenant-a");

    for alpn in [&[&b"http/1.1"[..]][..], &[b"h2"]] {
        // No certificate: refused (TLS 1.3 reports it at the first read, so the request fails rather than the handshake).
        let refused = https(server.addr, client_config(&ca, None, alpn), "/v2/models/fixed_affine/infer", Some(infer_body())).await;
        assert!(refused.is_err(), "no client certificate was served: {refused:?}");
        // A certificate from another CA: refused.
        let refused = https(server.addr, client_config(&ca, Some(&forged), alpn), "/v2/models/fixed_affine/infer", Some(infer_body())).await;
        assert!(refused.is_err(), "a certificate from another CA was served: {refused:?}");
        // A certificate from the client CA: served.
        let (status, body) = https(server.addr, client_config(&ca, Some(&good), alpn), "/v2/models/fixed_affine/infer", Some(infer_body())).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    // gRPC: the same rules.
    let no_cert = match grpc_tls(server.grpc_addr, client_config(&ca, None, &[b"h2"])).await {
        Ok(channel) => grpc_infer(channel).await.map(|_| ()).map_err(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(no_cert.is_err(), "gRPC without a client certificate was served");
    let forged_grpc = match grpc_tls(server.grpc_addr, client_config(&ca, Some(&forged), &[b"h2"])).await {
        Ok(channel) => grpc_infer(channel).await.map(|_| ()).map_err(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(forged_grpc.is_err(), "gRPC with a certificate from another CA was served");
    let channel = grpc_tls(server.grpc_addr, client_config(&ca, Some(&good), &[b"h2"])).await.unwrap();
    grpc_infer(channel).await.unwrap();

    let metrics = server.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"http\",reason=\"tls_handshake\"}") >= 4.0, "{text}");
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"grpc\",reason=\"tls_handshake\"}") >= 2.0, "{text}");
    server.shutdown().await;

    // client_auth = "optional": no certificate is fine, a bad one is not.
    let server = start_tls(files.tls(Some(&client_ca), Some(ClientAuth::Optional)), None).await;
    let (status, _) = https(server.addr, client_config(&ca, None, &[b"http/1.1"]), "/v2/models/fixed_affine/infer", Some(infer_body())).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let refused = https(server.addr, client_config(&ca, Some(&forged), &[b"http/1.1"]), "/v2/health/live", None).await;
    assert!(refused.is_err(), "a certificate from another CA was accepted: {refused:?}");
    let (status, _) = https(server.addr, client_config(&ca, Some(&good), &[b"http/1.1"]), "/v2/health/live", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_are_used_without_a_restart_and_broken_ones_are_not() {
    let ca = Ca::new("sluice test CA");
    let files = Files::new();
    let first = ca.server(1);
    files.server(&first);
    let server = start_tls(files.tls(None, None), None).await;
    let config = client_config(&ca, None, &[b"http/1.1"]);
    let grpc_config = client_config(&ca, None, &[b"h2"]);
    assert_eq!(peer_cert(&tls_connect(server.addr, config.clone()).await.unwrap()), first.der);

    // A connection opened before the change keeps working on its certificate.
    let before = tls_connect(server.addr, config.clone()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(before)).await.unwrap();
    tokio::spawn(conn);

    // New files: new connections (HTTP and gRPC) get the new certificate within a few reload intervals.
    let second = ca.server(2);
    files.server(&second);
    let started = Instant::now();
    loop {
        let seen = peer_cert(&tls_connect(server.addr, config.clone()).await.unwrap());
        if seen == second.der {
            break;
        }
        assert_eq!(seen, first.der);
        assert!(started.elapsed() < Duration::from_secs(10), "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("new certificate in use {:?} after the files changed", started.elapsed());
    assert_eq!(peer_cert(&tls_connect(server.grpc_addr, grpc_config.clone()).await.unwrap()), second.der);
    let request = Request::get("/v2/health/live").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), StatusCode::OK, "the old connection still works");

    // Broken replacements: garbage, then a key that does not match the certificate. The second certificate stays.
    files.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = ca.server(3);
    files.write("server.pem", &third.cert_pem);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        assert_eq!(peer_cert(&tls_connect(server.addr, config.clone()).await.unwrap()), second.der);
        assert_eq!(peer_cert(&tls_connect(server.grpc_addr, grpc_config.clone()).await.unwrap()), second.der);
    }
    let (status, _) = https(server.addr, config.clone(), "/v2/models/fixed_affine/infer", Some(infer_body())).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let metrics = server.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(metric(&text, "sluice_tls_reloads_total{listener=\"data\",result=\"ok\"}") >= 1.0, "{text}");
    assert!(metric(&text, "sluice_tls_reloads_total{listener=\"data\",result=\"failed\"}") >= 2.0, "{text}");

    // Fixing the files (the key to go with the third certificate) is picked up.
    files.write("server.key", &third.key_pem);
    let started = Instant::now();
    while peer_cert(&tls_connect(server.addr, config.clone()).await.unwrap()) != third.der {
        assert!(started.elapsed() < Duration::from_secs(10), "the repaired files were not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_the_start_naming_the_key() {
    let ca = Ca::new("sluice test CA");
    let files = Files::new();
    let leaf = ca.server(1);
    let other = ca.server(2);
    files.server(&leaf);
    let start = |tls: TlsConfig| async move {
        let repo = TempRepo::new().link("fixed_affine");
        let mut config = Config::default();
        config.server.models = repo.path().to_path_buf();
        config.server.http = "127.0.0.1:0".parse().unwrap();
        config.server.grpc = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.scaling.keda.listen = "127.0.0.1:0".parse().unwrap();
        config.server.tls = Some(tls);
        match sluice::app::start(&config, std::future::pending::<()>()).await {
            Ok(running) => {
                running.shutdown().await.unwrap();
                panic!("the server started with bad TLS files");
            }
            Err(e) => e.to_string(),
        }
    };
    let mut missing = files.tls(None, None);
    missing.cert = files.path("nope.pem");
    let err = start(missing).await;
    assert!(err.contains("`server.tls.cert`") && err.contains("nope.pem") && err.contains("cannot read"), "{err}");

    files.write("empty.pem", "no PEM here\n");
    let mut no_cert = files.tls(None, None);
    no_cert.cert = files.path("empty.pem");
    let err = start(no_cert).await;
    assert!(err.contains("`server.tls.cert`") && err.contains("no PEM certificate"), "{err}");

    let mut no_key = files.tls(None, None);
    no_key.key = files.path("server.pem");
    let err = start(no_key).await;
    assert!(err.contains("`server.tls.key`") && err.contains("private key"), "{err}");

    files.write("other.key", &other.key_pem);
    let mut mismatch = files.tls(None, None);
    mismatch.key = files.path("other.key");
    let err = start(mismatch).await;
    assert!(err.contains("`server.tls.key`") && err.contains("does not match"), "{err}");

    let mut bad_ca = files.tls(Some(&files.path("empty.pem")), None);
    bad_ca.client_auth = Some(ClientAuth::Required);
    let err = start(bad_ca).await;
    assert!(err.contains("`server.tls.client_ca`"), "{err}");

    // The same checks as the file loader, without a server: TlsSource::load.
    assert!(sluice::server::tls::TlsSource::load(&files.tls(None, None), false).is_ok());
}

/// A raw TLS client that sends nothing after the handshake starts is cut off by the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped_after_the_handshake_timeout() {
    let ca = Ca::new("sluice test CA");
    let files = Files::new();
    files.server(&ca.server(1));
    let mut tls = files.tls(None, None);
    tls.handshake_timeout = Duration::from_millis(500);
    let server = start_tls(tls, None).await;
    for addr in [server.addr, server.grpc_addr] {
        // The first byte of a TLS record, then silence.
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[0x16]).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("the server closes a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(3), "{addr}: closed after {waited:?} ({read:?})");
    }
    let (status, _) = https(server.addr, client_config(&ca, None, &[b"http/1.1"]), "/v2/health/live", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}
