//! No client can take the server down: the release binary with small `server.limits`,
//! attacked over raw HTTP/2 and TCP. Per limit: a connection with partial messages and more
//! streams than allowed, an oversized message, a burst beyond the in-flight limit (shed at
//! once, Check answered with a 503 OVERLOADED deny), silent and slow clients on both
//! listeners, the connection limit, and accept errors (EMFILE) that must not spin. Each test
//! checks the server's memory stays bounded and a normal request still succeeds.

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    time::{Duration, Instant},
};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm::ES256;
use portcullis::pb::{self, auth_client::AuthClient};
use tokio::net::TcpStream;

use crate::support::{
    process::{Options, ServerProcess, free_port, http_get, is_ready},
    *,
};
const ISS: &str = "https://a.test";
const AUD: &str = "api://orders";

/// The server binary, killed (by its PID) when dropped.
struct Server {
    process: ServerProcess,
    grpc: String,
    admin: String,
    _dir: tempfile::TempDir,
    key: TestKey,
}

impl Server {
    /// Starts `portcullis serve` with these `server.limits` (YAML flow mapping body) and
    /// `extra` config, under `ulimit -n` when `max_files` is set.
    async fn start(limits: &str, extra: &str, max_files: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::new(ES256, "k1");
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
        let (grpc, admin) = (free_port(), free_port());
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(
            &config,
            format!(
                "server: {{grpc_listen: 127.0.0.1:{grpc}, admin_listen: 127.0.0.1:{admin}, limits: {{{limits}}}}}\ntelemetry: {{log_level: warn}}\nissuers:\n  - {{name: corp, issuer: {ISS}, jwks_file: {}, audiences: [{AUD}]}}\n{extra}",
                jwks_path.display()
            ),
        )
        .unwrap();
        let process = ServerProcess::spawn(
            &config,
            Options {
                max_files,
                ..Options::default()
            },
        );
        let server = Server {
            process,
            grpc: format!("127.0.0.1:{grpc}"),
            admin: format!("127.0.0.1:{admin}"),
            _dir: dir,
            key,
        };
        let started = Instant::now();
        while !is_ready(&server.admin) {
            assert!(started.elapsed() < Duration::from_secs(10), "server ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// User plus system CPU time of the server so far, in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    async fn client(&self) -> AuthClient<tonic::transport::Channel> {
        AuthClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connects")
    }

    /// One normal Authenticate with a fresh valid token: it must succeed.
    async fn assert_serves(&self) {
        let mut client = self.client().await;
        let token = self.key.sign(&claims(ISS, AUD));
        let response =
            tokio::time::timeout(Duration::from_secs(5), authenticate(&mut client, &token))
                .await
                .expect("a normal request is answered");
        assert!(response.authenticated, "{:?}", response.denial);
    }
}

/// A gRPC message frame header declaring `length` bytes, then `sent` of them.
fn partial_message(length: u32, sent: usize) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend(std::iter::repeat_n(0x0a, sent));
    Bytes::from(frame)
}

fn grpc_request(addr: &str, method: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The gRPC status of a response (trailers-only, or in the trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Some(status.to_str().ok()?.to_owned());
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.ok()?;
    }
    let trailers = body.trailers().await.ok()??;
    Some(trailers.get("grpc-status")?.to_str().ok()?.to_owned())
}

#[tokio::test]
async fn partial_messages_and_stream_floods_stay_bounded() {
    let server = Server::start(
        "max_concurrent_streams: 8, max_request_bytes: 65536, request_timeout: 2s",
        "",
        None,
    )
    .await;
    server.assert_serves().await;
    let baseline = server.rss_kib();

    // Eight connections each try to hold 40 streams with a 60 KB message half sent. The
    // server advertises max_concurrent_streams, so the client may open only 8 of them.
    let mut held = Vec::new();
    for _ in 0..8 {
        let tcp = TcpStream::connect(&server.grpc).await.unwrap();
        let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
        let mut ping_pong = connection.ping_pong().unwrap();
        let pong = ping_pong.ping(h2::Ping::opaque());
        tokio::select! {
            _ = &mut connection => panic!("the connection ended"),
            pong = pong => { pong.unwrap(); }
        }
        assert_eq!(connection.max_concurrent_send_streams(), 8);
        tokio::spawn(connection);
        let mut send = send;
        for _ in 0..40 {
            send = send.ready().await.unwrap();
            let (response, mut body) = send
                .send_request(
                    grpc_request(&server.grpc, "/portcullis.v1.Auth/Authenticate"),
                    false,
                )
                .unwrap();
            let _ = body.send_data(partial_message(60_000, 50_000), false);
            held.push((response, body));
        }
    }
    // Meanwhile: a normal request succeeds, and memory stays bounded.
    server.assert_serves().await;
    let grown = server.rss_kib().saturating_sub(baseline);
    assert!(grown < 48 * 1024, "RSS grew by {grown} KiB");

    // A message declared over max_request_bytes is refused at once, not buffered.
    let tcp = TcpStream::connect(&server.grpc).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, mut body) = send
        .send_request(
            grpc_request(&server.grpc, "/portcullis.v1.Auth/Authenticate"),
            false,
        )
        .unwrap();
    body.send_data(partial_message(4_000_000, 16_000), false)
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(1), grpc_status(response))
        .await
        .expect("an oversized message is refused without waiting for it");
    assert!(
        matches!(status.as_deref(), Some(code) if code != "0"),
        "{status:?}"
    );

    // The silent partial messages are cut off after request_timeout.
    let (response, _body) = held.swap_remove(0);
    let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(response))
        .await
        .expect("a stalled message is cut off after request_timeout");
    assert!(
        matches!(status.as_deref(), Some(code) if code != "0"),
        "{status:?}"
    );
    server.assert_serves().await;
}

/// An introspection endpoint that accepts connections and never answers.
async fn hanging_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

#[tokio::test]
async fn a_burst_beyond_the_in_flight_limit_is_shed_at_once() {
    let endpoint = hanging_endpoint().await;
    let server = Server::start(
        "max_in_flight: 4",
        &format!(
            "  - {{name: opaque, issuer: https://opaque.test, introspection: {{endpoint: \"{endpoint}\", client_id: portcullis, client_secret: \"s3cret-for-tests\", timeout: 4s}}}}\n"
        ),
        None,
    )
    .await;
    let baseline = server.rss_kib();
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut client = server.client().await;
        calls.push(tokio::spawn(async move {
            let result = client
                .authenticate(pb::AuthenticateRequest {
                    credential: Some(pb::Credential {
                        kind: Some(pb::credential::Kind::BearerToken(format!(
                            "opaque-{i:04}-token"
                        ))),
                    }),
                    ..Default::default()
                })
                .await;
            (result.err().map(|status| status.code()), Instant::now())
        }));
        // Let the first ones take their slots.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While four requests hang: Check is answered with an OVERLOADED deny (an OK RPC), and
    // health checks are never shed.
    let mut envoy = AuthorizationClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let check = envoy
        .check(check_request("GET", "/x", &[]))
        .await
        .expect("Check is an OK RPC even when overloaded")
        .into_inner();
    let Some(envoy_types::ext_authz::v3::pb::HttpResponse::DeniedResponse(denied)) =
        check.http_response
    else {
        panic!("a deny: {check:?}")
    };
    assert_eq!(denied.status.unwrap().code, 503);
    assert!(denied.body.contains("OVERLOADED"), "{}", denied.body);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is never shed")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut shed = 0;
    let mut waited = 0;
    for call in calls {
        let (code, finished) = call.await.unwrap();
        match code {
            Some(tonic::Code::ResourceExhausted) => {
                shed += 1;
                assert!(
                    finished.duration_since(started) < Duration::from_secs(2),
                    "shed at once, not after the hanging calls"
                );
            }
            _ => waited += 1,
        }
    }
    assert!(
        waited <= 4,
        "at most max_in_flight were admitted ({waited})"
    );
    assert!(shed >= 8, "the rest were shed ({shed})");
    let metrics = http_get(&server.admin, "/metrics").unwrap();
    let lower = metrics.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/openmetrics-text"),
        "{metrics}"
    );
    for family in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
        "portcullis_build_info{version=",
    ] {
        assert!(metrics.contains(family), "{family} exported");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_requests_shed_total ") && !l.ends_with(" 0")),
        "shedding is counted"
    );
    assert!(server.rss_kib().saturating_sub(baseline) < 32 * 1024);
    server.assert_serves().await;
}

/// Reads until the peer closes; true when it closed within `within`.
fn closed_within(stream: &mut StdTcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 4096];
    let started = Instant::now();
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
        if started.elapsed() > within {
            return false;
        }
    }
}

#[tokio::test]
async fn silent_and_slow_clients_are_cut_off() {
    let server = Server::start(
        "idle_timeout: 1s, admin_header_timeout: 1s, keepalive_interval: 1s, keepalive_timeout: 1s",
        "",
        None,
    )
    .await;
    // Says nothing at all.
    let mut silent = StdTcpStream::connect(&server.grpc).unwrap();
    // Starts the HTTP/2 preface and stops.
    let mut half_preface = StdTcpStream::connect(&server.grpc).unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    // A partial admin request.
    let mut slow_admin = StdTcpStream::connect(&server.admin).unwrap();
    slow_admin
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    for (name, stream) in [
        ("silent gRPC client", &mut silent),
        ("half a preface", &mut half_preface),
        ("partial admin request", &mut slow_admin),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(4)),
            "{name} is cut off"
        );
    }
    server.assert_serves().await;
    assert!(
        http_get(&server.admin, "/healthz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let server = Server::start("max_connections: 3, idle_timeout: 30s", "", None).await;
    let mut held: Vec<StdTcpStream> = (0..3)
        .map(|_| StdTcpStream::connect(&server.grpc).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth connection is not served while three are open ...
    let token = server.key.sign(&claims(ISS, AUD));
    let grpc = server.grpc.clone();
    let waiting = tokio::spawn(async move {
        let mut client = AuthClient::connect(format!("http://{grpc}")).await.unwrap();
        authenticate(&mut client, &token).await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "the fourth connection waits");
    // ... and is as soon as one closes.
    held.pop();
    let response = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(response.authenticated);
    drop(held);
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_spin_the_accept_loop() {
    let server = Server::start("", "", Some(64)).await;
    server.assert_serves().await;
    // More connections than descriptors: accept() fails with EMFILE while they stay open.
    let held: Vec<StdTcpStream> = (0..100)
        .filter_map(|_| StdTcpStream::connect(&server.grpc).ok())
        .collect();
    assert!(held.len() > 64, "the backlog took the excess connections");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = server.cpu_ticks() - before;
    assert!(
        spent < 30,
        "{spent} ticks of CPU in 2 s with no traffic: the accept loop spins"
    );
    drop(held);
    server.assert_serves().await;
}
