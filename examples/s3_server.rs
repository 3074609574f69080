//! A local S3 server for benchmarks and manual testing: s3s over s3s-fs, authentication on.
//!
//! ```text
//! cargo run --release --example s3_server -- ROOT_DIR [PORT [CERT.pem KEY.pem]]
//! ```
//! Buckets are the directories under ROOT_DIR. Credentials: access key `AKIALOGSHIPTEST00001`,
//! secret `logship-test-secret-key-0000000000000000`. Prints `http://127.0.0.1:PORT` (or
//! `https://...` with a certificate and key: TLS as real S3 endpoints have it), then serves until
//! killed.

#[path = "../tests/it/common/atomic_requests.rs"]
mod atomic_requests;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

const ACCESS_KEY: &str = "AKIALOGSHIPTEST00001";
const SECRET_KEY: &str = "logship-test-secret-key-0000000000000000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args.next().ok_or("usage: s3_server ROOT_DIR [PORT]")?;
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(tls_acceptor(&cert, &key)?),
        _ => None,
    };
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| format!("{e:?}"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("{scheme}://{}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        // Each request handled to its end, as real S3's atomic PUT (see the function).
        let service = atomic_requests::atomic_requests(service.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = ConnBuilder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(socket).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(socket), service).await;
                }
            }
        });
    }
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, Box<dyn std::error::Error>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}
