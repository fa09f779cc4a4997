//! A PostgreSQL database of its own for one test, on the server the test command provisions
//! (`PORTCULLIS_TEST_DATABASE_URL`, scripts/provision/postgres.sh). Under CI=true a missing
//! database fails the test; elsewhere it is skipped with a message.

use std::{process::Command, time::Duration};

use portcullis::keys::api_keys::format;
use sqlx::{Executor, PgPool};

use super::process::BIN;

/// A database of its own for one test, dropped by `drop_database`.
pub struct TestDb {
    pub admin: PgPool,
    pub name: String,
    pub url: String,
}

pub async fn test_database() -> Option<TestDb> {
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    let Ok(base) = std::env::var("PORTCULLIS_TEST_DATABASE_URL") else {
        assert!(
            !in_ci,
            "CI=true: PORTCULLIS_TEST_DATABASE_URL must be set (scripts/provision/postgres.sh)"
        );
        eprintln!(
            "SKIPPED: PORTCULLIS_TEST_DATABASE_URL is not set; eval \"$(scripts/provision/postgres.sh)\""
        );
        return None;
    };
    let admin = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&base)
        .await
    {
        Ok(pool) => pool,
        Err(err) => {
            assert!(!in_ci, "CI=true: cannot reach the test database: {err}");
            eprintln!("SKIPPED: cannot reach PORTCULLIS_TEST_DATABASE_URL: {err}");
            return None;
        }
    };
    let name = format!(
        "portcullis_t_{}",
        format::random_base62(10).unwrap().to_lowercase()
    );
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (prefix, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
    let url = format!("{prefix}/{name}");
    Some(TestDb { admin, name, url })
}

impl TestDb {
    pub async fn drop_database(self) {
        let _ = self
            .admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await;
    }

    /// Runs the CLI with `DATABASE_URL` set to this database; it must succeed.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let output = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &self.url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "portcullis {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Makes the database unreachable: no new connections, existing ones cut.
    pub async fn go_down(&self) {
        self.admin
            .execute(format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name).as_str())
            .await
            .unwrap();
        self.admin
            .execute(
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                    self.name
                )
                .as_str(),
            )
            .await
            .unwrap();
    }

    /// Lets connections in again.
    pub async fn come_back(&self) {
        self.admin
            .execute(format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name).as_str())
            .await
            .unwrap();
    }
}
