//! The `portcullis` binary as a child process: `portcullis serve` on a config file (under
//! `ulimit -n` if asked, with extra environment), waited for until `/readyz` answers 200,
//! and killed by its PID when dropped (also when an assertion fails). Also the free ports and
//! the blocking HTTP GET such tests use, and the path of the binary for one-shot commands.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A port free on 127.0.0.1 now (for configs that name their listeners).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A blocking HTTP/1.1 GET; the whole answer, or None when the connection fails.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Whether the admin listener at `admin` reports ready.
pub fn is_ready(admin: &str) -> bool {
    http_get(admin, "/readyz").is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
}

/// How to start the server.
#[derive(Default)]
pub struct Options<'a> {
    /// `ulimit -n` for the process.
    pub max_files: Option<u32>,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Keep stderr (the logs) readable through [`ServerProcess::log_lines`]; else discarded.
    pub capture_logs: bool,
}

/// A running `portcullis serve`, killed (by its PID) when dropped.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `portcullis serve --config CONFIG`. `RUST_LOG` is not inherited: the config's
    /// log level applies.
    pub fn spawn(config: &Path, options: Options<'_>) -> Self {
        let mut command = match options.max_files {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!(
                        "ulimit -n {limit} && exec \"$0\" serve --config \"$1\""
                    ))
                    .arg(BIN)
                    .arg(config);
                sh
            }
            None => {
                let mut bin = Command::new(BIN);
                bin.arg("serve").arg("--config").arg(config);
                bin
            }
        };
        command
            .env_remove("RUST_LOG")
            .envs(options.env.iter().copied())
            .stdout(Stdio::null())
            .stderr(if options.capture_logs {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        Self {
            child: command.spawn().expect("the server binary starts"),
        }
    }

    /// Starts the server and waits (up to 15 s) until `admin` reports ready.
    pub fn spawn_ready(config: &Path, admin: &str, options: Options<'_>) -> Self {
        let server = Self::spawn(config, options);
        server.wait_ready(admin);
        server
    }

    /// Waits (up to 15 s) until `admin` reports ready.
    pub fn wait_ready(&self, admin: &str) {
        let started = Instant::now();
        while !is_ready(admin) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the server did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines (stderr) as they come; only with `capture_logs`, and only once.
    pub fn log_lines(&mut self) -> mpsc::Receiver<String> {
        let stderr = self
            .child
            .stderr
            .take()
            .expect("started with capture_logs, and read once");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        lines
    }

    /// Sends SIGTERM and waits (up to 15 s) for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM delivered");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A `portcullis serve` process on free loopback ports, ready.
pub struct Replica {
    /// Stopped (by its PID) when the replica is dropped.
    _process: ServerProcess,
    pub grpc: u16,
    /// Its forward-auth listener's port.
    pub http: u16,
    /// `127.0.0.1:PORT` of its admin listener.
    pub admin: String,
}

/// Starts a replica whose config is its listeners and then `config` (YAML), written under
/// `dir`; `env` gives the variables its `env:` references read.
pub fn replica(dir: &Path, config: &str, env: &[(&str, &str)]) -> Replica {
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let path = dir.join(format!("replica-{grpc}.yaml"));
    std::fs::write(
        &path,
        format!(
            "server: {{grpc_listen: 127.0.0.1:{grpc}, http_listen: 127.0.0.1:{http}, admin_listen: 127.0.0.1:{admin}}}\n{config}"
        ),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{admin}");
    let process = ServerProcess::spawn_ready(
        &path,
        &admin,
        Options {
            env,
            ..Options::default()
        },
    );
    Replica {
        _process: process,
        grpc,
        http,
        admin,
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
