//! The stores a run measures, each fresh and removed afterwards: a SQLite file in a temporary
//! directory, a PostgreSQL database of its own (`sessiond_bench_<random>`, dropped after), a
//! Redis key prefix of its own (its keys deleted after).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// Which store holds the sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoreKind {
    Sqlite,
    Postgres,
    Redis,
}

impl StoreKind {
    pub const ALL: [StoreKind; 3] = [StoreKind::Sqlite, StoreKind::Postgres, StoreKind::Redis];

    pub fn label(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "SQLite",
            StoreKind::Postgres => "PostgreSQL",
            StoreKind::Redis => "Redis",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Where the services are (the test suite's variables and defaults).
#[derive(Clone, Debug)]
pub struct Services {
    pub postgres: String,
    pub redis: String,
}

impl Services {
    pub fn from_env() -> Self {
        Self {
            postgres: std::env::var("SESSIOND_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            redis: std::env::var("SESSIOND_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        }
    }
}

/// Why a store has no figures: its service is not there (a notice), or something broke.
#[derive(Debug)]
pub enum Unavailable {
    Absent(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Unavailable {
    fn from(e: anyhow::Error) -> Self {
        Unavailable::Failed(e)
    }
}

/// A fresh store for one server; cleaned up when dropped.
#[derive(Debug)]
pub struct Store {
    pub kind: StoreKind,
    pub dir: tempfile::TempDir,
    /// `--database`
    pub database: String,
    /// `--session-store`, when not the database.
    pub session_store: Option<String>,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Nothing,
    DropDatabase { admin_url: String, name: String },
    DeleteKeys { url: String, prefix: String },
}

impl Store {
    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("sessiond.db")
    }

    /// Sets up a fresh store of `kind`. Users live in SQLite unless the database is
    /// PostgreSQL.
    pub fn create(kind: StoreKind, services: &Services) -> Result<Self, Unavailable> {
        let dir = tempfile::Builder::new()
            .prefix("sessiond-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let sqlite = format!("sqlite://{}", dir.path().join("sessiond.db").display());
        let tag = random_tag();
        match kind {
            StoreKind::Sqlite => Ok(Self {
                kind,
                dir,
                database: sqlite,
                session_store: None,
                cleanup: Cleanup::Nothing,
            }),
            StoreKind::Postgres => {
                let name = format!("sessiond_bench_{tag}");
                block_on(async {
                    let client = pg_connect(&services.postgres).await?;
                    client
                        .batch_execute(&format!("CREATE DATABASE {name}"))
                        .await
                        .map_err(|e| Unavailable::Failed(e.into()))
                })?;
                let mut url = url::Url::parse(&services.postgres)
                    .context("SESSIOND_TEST_POSTGRES_URL is not a URL")?;
                url.set_path(&format!("/{name}"));
                Ok(Self {
                    kind,
                    dir,
                    database: url.to_string(),
                    session_store: None,
                    cleanup: Cleanup::DropDatabase {
                        admin_url: services.postgres.clone(),
                        name,
                    },
                })
            }
            StoreKind::Redis => {
                block_on(async {
                    let mut conn = redis_connect(&services.redis).await?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map_err(|e| {
                            Unavailable::Absent(format!("Redis at {}: {e}", services.redis))
                        })
                })?;
                let prefix = format!("sessiond-bench-{tag}");
                Ok(Self {
                    kind,
                    dir,
                    database: sqlite,
                    session_store: Some(format!("{}?prefix={prefix}", services.redis)),
                    cleanup: Cleanup::DeleteKeys {
                        url: services.redis.clone(),
                        prefix,
                    },
                })
            }
        }
    }

    /// The `serve` arguments for these stores.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--database".to_owned(), self.database.clone()];
        if let Some(s) = &self.session_store {
            a.push("--session-store".to_owned());
            a.push(s.clone());
        }
        a
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let result = match &self.cleanup {
            Cleanup::Nothing => Ok(()),
            Cleanup::DropDatabase { admin_url, name } => block_on(async {
                let client = pg_connect(admin_url).await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| Unavailable::Failed(e.into()))
            }),
            Cleanup::DeleteKeys { url, prefix } => block_on(async {
                let mut conn = redis_connect(url).await?;
                delete_keys(&mut conn, prefix)
                    .await
                    .map_err(Unavailable::Failed)
            }),
        };
        if let Err(e) = result {
            eprintln!(
                "sessiond-bench: cleaning up the {} store failed: {e:?}",
                self.kind
            );
        }
    }
}

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, Unavailable>>,
) -> Result<T, Unavailable> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Unavailable::Failed(e.into()))?
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), f)
                .await
                .map_err(|_| Unavailable::Failed(anyhow::anyhow!("store setup timed out")))?
        })
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, Unavailable> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .map_err(|_| Unavailable::Absent(format!("PostgreSQL at {url}: no answer in 3 s")))?
        .map_err(|e| Unavailable::Absent(format!("PostgreSQL at {url}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn redis_connect(url: &str) -> Result<redis::aio::MultiplexedConnection, Unavailable> {
    let client = redis::Client::open(url)
        .map_err(|e| Unavailable::Failed(anyhow::anyhow!("Redis URL {url}: {e}")))?;
    tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| Unavailable::Absent(format!("Redis at {url}: no answer in 3 s")))?
    .map_err(|e| Unavailable::Absent(format!("Redis at {url}: {e}")))
}

/// Deletes every key of the deployment `prefix` (they all begin with the hash tag
/// `{prefix}`).
async fn delete_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<()> {
    let pattern = format!("{{{prefix}}}*");
    let mut cursor: u64 = 0;
    loop {
        // Bytes, not text: the Redis store keys sessions by 16 raw bytes.
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// 12 random lowercase hex digits.
pub fn random_tag() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
