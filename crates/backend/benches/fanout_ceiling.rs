//! The machine's own ceiling for a command fan-out: for each of N agents, one round trip over an
//! established TLS connection to a server on this host that spawns the same shell command, waits
//! for it and answers its output. That is the work no control plane can avoid (a TLS exchange
//! and a process per machine), without any of ours: no agent, no sandbox, no database, no HTTP
//! framework. At most `concurrency` round trips run at once, as the command's `max_concurrency`
//! allows the backend.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

/// Starts the spawning TLS server; returns its address and a connector that trusts it.
async fn server(shell: &'static str) -> (SocketAddr, TlsConnector) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["ceiling.local".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let cert_der: CertificateDer<'static> = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            // Out of descriptors is worth a retry, not the end of the server.
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Small writes each way: without this Nagle and delayed ACKs add 40 ms per exchange.
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut byte = [0u8; 1];
                // One byte asks for one run of the command; its output is the answer.
                while tls.read_exact(&mut byte).await.is_ok() {
                    let output = tokio::process::Command::new("sh")
                        .args(["-c", shell])
                        .env("NIM_MACHINE", "ceiling")
                        .output()
                        .await
                        .expect("the command runs");
                    let length = u32::try_from(output.stdout.len()).unwrap_or(u32::MAX);
                    if tls.write_all(&length.to_be_bytes()).await.is_err()
                        || tls.write_all(&output.stdout).await.is_err()
                        || tls.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (addr, TlsConnector::from(Arc::new(client)))
}

async fn round_trip(tls: &mut TlsStream<TcpStream>) {
    // TLS buffers writes: flush, or the byte never leaves.
    tls.write_all(&[1]).await.expect("request");
    tls.flush().await.expect("request sent");
    let mut length = [0u8; 4];
    tls.read_exact(&mut length).await.expect("answer length");
    let mut output = vec![0u8; u32::from_be_bytes(length) as usize];
    tls.read_exact(&mut output).await.expect("answer");
    assert!(!output.is_empty(), "the command printed nothing");
}

/// Time for `n` machines' worth of round trips, `concurrency` at a time, over connections opened
/// beforehand (the backend keeps its agent connections open too).
pub async fn measure(shell: &'static str, n: usize, concurrency: usize) -> Duration {
    // Both ends of N connections live in this process: 2N descriptors, past the usual 1,024.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("the descriptor limit");
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    let (addr, connector) = server(shell).await;
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from("ceiling.local").expect("a name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        round_trip(&mut tls).await; // warm: the first exchange is not timed
        connections.push(tls);
    }
    let started = std::time::Instant::now();
    stream::iter(connections.iter_mut()).for_each_concurrent(concurrency, round_trip).await;
    started.elapsed()
}
