//! Fresh PostgreSQL databases per test, cloned from a seeded template built once per seed version.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};

use crate::seeds_dir;

/// The server tests create databases on: `WANGGE_TEST_DATABASE_URL`, else the local trust-auth one.
pub fn admin_url() -> String {
    std::env::var("WANGGE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn url_for(database: &str) -> String {
    // The admin URL with its database swapped; it carries no query string.
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    format!("{base}/{database}")
}

/// A database dropped (with force) when this value drops, even when the test failed.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A new database holding the migrated schema and the Xiamen seeds.
    pub async fn seeded(label: &str) -> TestDb {
        let template = template().await;
        let name = format!("wangge_t_{}_{label}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        admin
            .execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#).as_str())
            .await
            .unwrap();
        TestDb {
            url: url_for(&name),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A handle whose database was handed on (a restarted tier) has no name left.
        if self.name.is_empty() {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ = admin
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

fn hash_dir(dir: &Path, hasher: &mut DefaultHasher) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            hash_dir(&path, hasher);
        } else {
            path.file_name().hash(hasher);
            std::fs::read(&path).unwrap().hash(hasher);
        }
    }
}

/// The name of the seeded template database for the current migrations and seeds, built on first use.
/// Test processes run in parallel: an advisory lock makes one build it while the others wait.
async fn template() -> String {
    let mut hasher = DefaultHasher::new();
    hash_dir(&seeds_dir(), &mut hasher);
    hash_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/store/migrations"),
        &mut hasher,
    );
    let name = format!("wangge_template_{:016x}", hasher.finish());

    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    admin
        .execute("SELECT pg_advisory_lock(727274)")
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        let building = format!("{name}_building");
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#).as_str())
            .await
            .unwrap();
        admin
            .execute(format!(r#"CREATE DATABASE "{building}""#).as_str())
            .await
            .unwrap();
        {
            let options = PgConnectOptions::from_str(&url_for(&building)).unwrap();
            let pool = wangge_store::connect(options, 2).await.unwrap();
            wangge_seed::import(&pool, &seeds_dir(), &mut |_| {})
                .await
                .unwrap();
            pool.close().await;
        }
        admin
            .execute(format!(r#"ALTER DATABASE "{building}" RENAME TO "{name}""#).as_str())
            .await
            .unwrap();
    }
    admin
        .execute("SELECT pg_advisory_unlock(727274)")
        .await
        .unwrap();
    name
}
