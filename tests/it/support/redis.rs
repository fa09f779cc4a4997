//! A real `redis-server` (scripts/provision/redis.sh) of a test's own on 127.0.0.1, stopped
//! by PID. Reads `PORTCULLIS_REDIS_SERVER` (else `redis-server` on PATH). Under CI=true a
//! missing Redis fails the test; elsewhere it is skipped with a message.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `redis-server` of this test's own, stopped (by PID) when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn binary() -> Option<String> {
        let in_ci = std::env::var("CI").as_deref() == Ok("true");
        let binary =
            std::env::var("PORTCULLIS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let found = Command::new(&binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                !in_ci,
                "CI=true: redis-server is missing (scripts/provision/redis.sh)"
            );
            eprintln!("SKIPPED: redis-server not found; run scripts/provision/redis.sh");
            return None;
        }
        Some(binary)
    }

    pub fn start(binary: &str, port: u16) -> Self {
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
