//! `openloop`: drives one Portcullis RPC (an Envoy Check or an Authenticate with a bearer
//! token, or the health check as the floor) at a constant arrival rate, the way independent clients do, and reports latency
//! percentiles measured from each request's *scheduled* send time. A server that falls
//! behind therefore shows its queueing in the figures instead of slowing the generator down
//! (no coordinated omission). With `--rate 0` it runs closed-loop instead, `--in-flight`
//! requests outstanding, to find the peak rate.
//!
//! It runs on one thread (pin it to its own core), spreads requests over `--connections`
//! HTTP/2 connections, checks every answer (a Check must be an OK allow, an Authenticate
//! authenticated) and prints one JSON object. Requests scheduled during `--warmup-seconds`
//! are sent but not recorded.
//!
//! With `--distinct-tokens N` it instead presents N different quickstart tokens (subjects
//! and `jti`s numbered from `--first-token`), each once, closed-loop, in `--rpc` requests:
//! what the cache-memory benchmark fills the verification cache with.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use hdrhistogram::Histogram;
use portcullis::pb::{Credential, credential};
use prost::Message;
use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};
use tonic_prost::ProstCodec;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Rpc {
    /// `envoy.service.auth.v3.Authorization/Check`
    Check,
    /// `portcullis.v1.Auth/Authenticate`
    Authenticate,
    /// `grpc.health.v1.Health/Check`, the floor: the cheapest RPC the server answers
    Health,
}

#[derive(Debug, Parser)]
#[command(about = "Open-loop gRPC load generator for Portcullis")]
struct Args {
    /// The gRPC listener, host:port.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    rpc: Rpc,
    /// The bearer token every request presents.
    #[arg(long, default_value = "", required_unless_present_any = ["distinct_tokens", "token_file"])]
    token: String,
    /// Open loop: read the token from this file, and again whenever the file changes (a key
    /// rotation during a soak run hands the generator a token of the new key this way).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Present this many different quickstart tokens, each once.
    #[arg(long)]
    distinct_tokens: Option<u64>,
    /// The number of the first of those tokens.
    #[arg(long, default_value_t = 0)]
    first_token: u64,
    /// Check only: the request's method and path.
    #[arg(long, default_value = "GET")]
    http_method: String,
    #[arg(long, default_value = "/orders/1")]
    path: String,
    /// Requests per second; 0 runs closed-loop (see --in-flight).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Closed loop: requests outstanding at any time.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Open loop: most requests outstanding; beyond it sends wait (and their wait counts in
    /// their latency), so a stalled server cannot make the generator hold unbounded memory.
    #[arg(long, default_value_t = 20_000)]
    max_outstanding: usize,
}

/// What the requests' answers added up to. Latency is recorded for expected answers only.
struct Tally {
    latency_us: Histogram<u64>,
    errors: u64,
    wrong: u64,
    /// Turned away by load shedding (OVERLOADED / RESOURCE_EXHAUSTED), with their latency.
    shed: u64,
    shed_latency_us: Histogram<u64>,
}

impl Tally {
    fn record(&mut self, latency: Duration, answer: Answer) {
        match answer {
            Answer::Expected => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(micros.max(1));
            }
            Answer::Shed => {
                self.shed += 1;
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.shed_latency_us.saturating_record(micros.max(1));
            }
            Answer::Wrong => self.wrong += 1,
            Answer::Error => self.errors += 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Expected,
    /// Load shedding answered at once (a 503 OVERLOADED Check, RESOURCE_EXHAUSTED).
    Shed,
    Wrong,
    Error,
}

/// A request whose one message field is pre-encoded: `CheckRequest.attributes` (tag 1) or
/// `AuthenticateRequest.credential` (tag 1). Protobuf encodes an embedded message as a
/// `bytes` field with its tag, so this is the same request on the wire, and sending it
/// copies bytes instead of cloning and encoding a map of headers per request.
#[derive(Clone, PartialEq, prost::Message)]
struct Preencoded {
    #[prost(bytes = "bytes", tag = "1")]
    field: Bytes,
}

/// What a Check answer is read for: its status, and whether it is an `OkHttpResponse`
/// (tag 3); every other field is skipped undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct CheckVerdict {
    #[prost(message, optional, tag = "1")]
    status: Option<envoy_types::pb::google::rpc::Status>,
    #[prost(bytes = "bytes", optional, tag = "3")]
    ok_response: Option<Bytes>,
}

/// What an Authenticate answer is read for.
#[derive(Clone, PartialEq, prost::Message)]
struct AuthenticateVerdict {
    #[prost(bool, tag = "1")]
    authenticated: bool,
}

/// `grpc.health.v1.HealthCheckResponse`: its status (1 = SERVING).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthVerdict {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// One connection's client, able to send the configured request.
#[derive(Clone)]
struct Client {
    grpc: tonic::client::Grpc<Channel>,
    rpc: Rpc,
    request: Preencoded,
}

impl Client {
    async fn send(&mut self) -> Answer {
        if self.grpc.ready().await.is_err() {
            return Answer::Error;
        }
        let request = tonic::Request::new(self.request.clone());
        match self.rpc {
            Rpc::Check => {
                let path = PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
                let codec = ProstCodec::<Preencoded, CheckVerdict>::default();
                match self.grpc.unary(request, path, codec).await {
                    Ok(response) => {
                        let verdict = response.into_inner();
                        let overloaded = verdict.status.as_ref().is_some_and(|s| {
                            s.code == tonic::Code::Unavailable as i32 && s.message == "OVERLOADED"
                        });
                        let code = verdict.status.map(|s| s.code);
                        if code == Some(0) && verdict.ok_response.is_some() {
                            Answer::Expected
                        } else if overloaded {
                            Answer::Shed
                        } else {
                            Answer::Wrong
                        }
                    }
                    Err(_) => Answer::Error,
                }
            }
            Rpc::Authenticate => {
                let path = PathAndQuery::from_static("/portcullis.v1.Auth/Authenticate");
                let codec = ProstCodec::<Preencoded, AuthenticateVerdict>::default();
                match self.grpc.unary(request, path, codec).await {
                    Ok(response) if response.get_ref().authenticated => Answer::Expected,
                    Ok(_) => Answer::Wrong,
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => Answer::Shed,
                    Err(_) => Answer::Error,
                }
            }
            Rpc::Health => {
                let path = PathAndQuery::from_static("/grpc.health.v1.Health/Check");
                let codec = ProstCodec::<Preencoded, HealthVerdict>::default();
                match self.grpc.unary(request, path, codec).await {
                    Ok(response) if response.get_ref().status == 1 => Answer::Expected,
                    Ok(_) => Answer::Wrong,
                    Err(_) => Answer::Error,
                }
            }
        }
    }
}

fn check_request(args: &Args, token: &str) -> CheckRequest {
    let headers = [
        (":authority", "bench.example"),
        (":method", args.http_method.as_str()),
        (":path", args.path.as_str()),
        ("accept", "application/json"),
        ("user-agent", "openloop"),
        ("authorization", &format!("Bearer {token}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: args.http_method.clone(),
                    path: args.path.clone(),
                    host: "bench.example".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The pre-encoded request for `token`.
fn preencoded(args: &Args, token: &str) -> Preencoded {
    let field = match args.rpc {
        Rpc::Check => check_request(args, token)
            .attributes
            .unwrap_or_default()
            .encode_to_vec(),
        Rpc::Authenticate => Credential {
            kind: Some(credential::Kind::BearerToken(token.to_owned())),
        }
        .encode_to_vec(),
        // `HealthCheckRequest { service: "" }`: no fields on the wire.
        Rpc::Health => Vec::new(),
    };
    Preencoded {
        field: field.into(),
    }
}

async fn clients(args: &Args, token: &str) -> Result<Vec<Client>, tonic::transport::Error> {
    let request = preencoded(args, token);
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{}", args.target))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(Client {
            grpc: tonic::client::Grpc::new(channel),
            rpc: args.rpc,
            request: request.clone(),
        });
    }
    Ok(clients)
}

/// The longest the open loop busy-waits between two turns of the runtime (which answer
/// responses): it bounds both the error of a measured latency and the runtime's turns, each
/// a system call, to at most one per `SPIN`.
const SPIN: Duration = Duration::from_micros(20);

/// Sends at `rate` per second; latency counts from each request's scheduled time. Between
/// sends the loop busy-waits (at most [`SPIN`]) and yields to the runtime instead of
/// sleeping: tokio's timer rounds to the millisecond, and a pacing thread's wake-ups added
/// 100-200 µs to every latency here. The generator's core is therefore always busy (pin it
/// away from the server's).
async fn open_loop(args: &Args, mut clients: Vec<Client>, tally: Arc<Mutex<Tally>>) -> u64 {
    let mut token_file = args.token_file.as_deref().map(TokenFile::new);
    let mut next_look = Instant::now();
    let total = ((args.warmup_seconds + args.seconds) * args.rate) as u64;
    let first_recorded = (args.warmup_seconds * args.rate) as u64;
    let outstanding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = Instant::now();
    let mut next: u64 = 0;
    let mut late_sends: u64 = 0;
    while next < total {
        if let Some(file) = token_file.as_mut()
            && Instant::now() >= next_look
        {
            next_look = Instant::now() + Duration::from_millis(100);
            if let Some(token) = file.changed() {
                let request = preencoded(args, &token);
                for client in &mut clients {
                    client.request = request.clone();
                }
            }
        }
        let due = ((origin.elapsed().as_secs_f64() * args.rate) as u64 + 1).min(total);
        while next < due
            && outstanding.load(std::sync::atomic::Ordering::Relaxed) < args.max_outstanding
        {
            let scheduled = origin + Duration::from_secs_f64(next as f64 / args.rate);
            if scheduled.elapsed() > Duration::from_millis(1) {
                late_sends += 1;
            }
            let mut client = clients[(next as usize) % clients.len()].clone();
            let (tally, outstanding) = (tally.clone(), outstanding.clone());
            let recorded = next >= first_recorded;
            outstanding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let answer = client.send().await;
                let latency = scheduled.elapsed();
                outstanding.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if recorded && let Ok(mut tally) = tally.lock() {
                    tally.record(latency, answer);
                }
            });
            next += 1;
        }
        let next_send = origin + Duration::from_secs_f64(next as f64 / args.rate);
        let spin_until = next_send.min(Instant::now() + SPIN);
        while Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        tokio::task::yield_now().await;
    }
    while outstanding.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    late_sends
}

/// A token file watched for changes (by modification time and contents).
struct TokenFile {
    path: std::path::PathBuf,
    last: String,
}

impl TokenFile {
    fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.to_owned(),
            last: String::new(),
        }
    }

    /// The token, if it differs from the last one read (an unreadable or empty file keeps
    /// the last token).
    fn changed(&mut self) -> Option<String> {
        let token = std::fs::read_to_string(&self.path).ok()?.trim().to_owned();
        if token.is_empty() || token == self.last {
            return None;
        }
        self.last.clone_from(&token);
        Some(token)
    }
}

/// `in_flight` workers, each sending its next request when the last is answered.
async fn closed_loop(args: &Args, clients: Vec<Client>, tally: Arc<Mutex<Tally>>) {
    let start = Instant::now();
    let record_from = start + Duration::from_secs_f64(args.warmup_seconds);
    let end = record_from + Duration::from_secs_f64(args.seconds);
    let workers: Vec<_> = (0..args.in_flight.max(1))
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let answer = client.send().await;
                    if sent >= record_from
                        && let Ok(mut tally) = tally.lock()
                    {
                        tally.record(sent.elapsed(), answer);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// Sends `count` requests (`--rpc`) with distinct tokens, `in_flight` at a time; counts the
/// answers. Returns the length of the first token.
async fn distinct_tokens(args: &Args, count: u64, tally: Arc<Mutex<Tally>>) -> usize {
    let signer = portcullis_test_support::QuickstartSigner::new();
    let tokens: Vec<String> = (args.first_token..args.first_token + count)
        .map(|n| signer.token(&format!("user-{n}"), "orders:read", &format!("jti-{n}")))
        .collect();
    let token_chars = tokens.first().map_or(0, String::len);
    let Ok(clients) = clients(args, "").await else {
        return token_chars;
    };
    let requests: Arc<Vec<Preencoded>> =
        Arc::new(tokens.iter().map(|token| preencoded(args, token)).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.in_flight.max(1))
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let (requests, next, tally) = (requests.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                while let Some(request) =
                    requests.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    client.request = request.clone();
                    let sent = Instant::now();
                    let answer = client.send().await;
                    if let Ok(mut tally) = tally.lock() {
                        tally.record(sent.elapsed(), answer);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    token_chars
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tally = Arc::new(Mutex::new(Tally {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: 0,
        wrong: 0,
        shed: 0,
        shed_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    }));
    let mut token_chars = args.token.len();
    let late_sends = runtime.block_on(async {
        if let Some(count) = args.distinct_tokens {
            token_chars = distinct_tokens(&args, count, tally.clone()).await;
            return Ok(None);
        }
        let token = match &args.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|token| token.trim().to_owned())
                .unwrap_or_default(),
            None => args.token.clone(),
        };
        let clients = clients(&args, &token).await?;
        Ok::<_, tonic::transport::Error>(if args.rate > 0.0 {
            Some(open_loop(&args, clients, tally.clone()).await)
        } else {
            closed_loop(&args, clients, tally.clone()).await;
            None
        })
    })?;
    let tally = tally.lock().map_err(|_| "a request task panicked")?;
    let histogram = &tally.latency_us;
    let quantile = |q: f64| histogram.value_at_quantile(q);
    let report = serde_json::json!({
        "mode": match (args.distinct_tokens, args.rate > 0.0) {
            (Some(_), _) => "distinct-tokens",
            (None, true) => "open",
            (None, false) => "closed",
        },
        "offered_rps": args.rate,
        "seconds": args.seconds,
        "completed": histogram.len(),
        "throughput_rps": histogram.len() as f64 / args.seconds,
        "errors": tally.errors,
        "wrong": tally.wrong,
        "shed": tally.shed,
        "shed_p99_us": tally.shed_latency_us.value_at_quantile(0.99),
        "late_sends": late_sends,
        "token_chars": token_chars,
        "p50_us": quantile(0.50),
        "p90_us": quantile(0.90),
        "p99_us": quantile(0.99),
        "p999_us": quantile(0.999),
        "max_us": histogram.max(),
    });
    println!("{report}");
    Ok(())
}
