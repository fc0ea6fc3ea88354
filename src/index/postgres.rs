//! `PgIndex`: the index logic of [`KvIndex`] over PostgreSQL, for an archive of several
//! nodes sharing one index (`[index] backend = "postgres"`, docs/scale-out.md). The only
//! module that imports `tokio-postgres`.
//!
//! [`PgEngine`] keeps the key-value layout of [`super::kv`] — the same column families,
//! keys and record encodings as RocksDB — in one table:
//!
//! ```sql
//! CREATE TABLE strata_kv (cf TEXT NOT NULL, k BYTEA NOT NULL, v BYTEA NOT NULL,
//!                         PRIMARY KEY (cf, k));
//! ```
//!
//! so that everything [`KvIndex`] guarantees (counters, versions, secondary indexes, the
//! running tier totals, the conformance suite) holds on PostgreSQL unchanged. A `get` is
//! one primary-key lookup; a `scan` reads pages of [`SCAN_PAGE`] rows in key order
//! (`bytea` compares bytewise, as RocksDB does), holding no connection while the visitor
//! runs; a `write` is one transaction of at most two statements (`INSERT … ON CONFLICT
//! DO UPDATE` from arrays, `DELETE … WHERE (cf, k) IN (…)`).
//!
//! ## Writers on several nodes
//! [`KvIndex`] reads records and writes them back under one mutex per process. Nodes
//! sharing the database need the same for the whole cluster: [`PgEngine::lock_writes`]
//! opens a transaction and takes the row of `strata_write_lock` `FOR UPDATE`; the
//! writer's reads then run (on other connections, `READ COMMITTED`: they see every
//! committed write, and no writer elsewhere can commit meanwhile), and its batch is
//! written and committed in that transaction, which releases the lock. A writer that
//! writes nothing rolls back. Every write of every node is thereby serialised — the
//! price of read-modify-write records; the group committer batches instances so that a
//! transaction carries many. Row locks (not advisory locks) keep the SQL within what
//! CockroachDB and YugabyteDB accept.
//!
//! ## Schema migrations
//! `strata_schema` holds the schema version; [`PgEngine::open`] applies the migrations
//! above it in one transaction with that row locked, so nodes starting together apply
//! each once. Version 1 creates the tables above.
//!
//! ## Connections
//! tokio-postgres on a runtime of its own (two threads) with a deadpool pool: the
//! engine's calls come from blocking threads and the group committer's thread, and wait
//! on a channel, never blocking an async worker with a nested runtime. The URL is
//! libpq-style (`postgresql://user@host1:5432,host2:5432/db?target_session_attrs=read-write`,
//! several hosts tried in order); the password comes from `PGPASSWORD` or a file, never
//! from the URL ([`crate::config::IndexConfig`]).

use super::kv::{Batch, BatchOp, EntryVisitor, KvEngine, KvIndex};
use super::IndexError;
use deadpool_postgres::tokio_postgres;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

/// Rows read per page of a scan.
pub const SCAN_PAGE: i64 = 512;

/// The schema version this build writes and reads.
pub const PG_SCHEMA_VERSION: i32 = 1;

/// The index on PostgreSQL.
pub type PgIndex = KvIndex<PgEngine>;

/// The migrations, in order: migration `n` (1-based) brings the schema to version `n`.
const MIGRATIONS: [&str; 1] = ["CREATE TABLE IF NOT EXISTS strata_kv (
         cf TEXT NOT NULL,
         k BYTEA NOT NULL,
         v BYTEA NOT NULL,
         PRIMARY KEY (cf, k));
     CREATE TABLE IF NOT EXISTS strata_write_lock (id INT PRIMARY KEY);
     INSERT INTO strata_write_lock (id) VALUES (1) ON CONFLICT (id) DO NOTHING;"];

fn storage(what: &str, e: impl std::error::Error + 'static) -> IndexError {
    // a server error says what it is in its `DbError` (the `Display` is only "db error");
    // anything else with its causes (a TLS handshake says why only in its source)
    let detail = (&e as &dyn std::any::Any)
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .map(|db| format!("{} ({})", db.message(), db.code().code()))
        .unwrap_or_else(|| {
            let mut detail = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !detail.contains(&text) {
                    detail = format!("{detail}: {text}");
                }
                source = cause.source();
            }
            detail
        });
    IndexError::Storage(format!("PostgreSQL: {what}: {detail}"))
}

/// The table the index lives in, and the one `reindex` builds beside it.
pub const TABLE: &str = "strata_kv";
pub const REBUILD_TABLE: &str = "strata_kv_rebuild";

/// The statements of an engine, on its table.
struct Statements {
    get: String,
    get_many: String,
    scan_from: String,
    scan_after: String,
    upsert: String,
    delete: String,
}

impl Statements {
    fn on(table: &str) -> Self {
        Statements {
            get: format!("SELECT v FROM {table} WHERE cf = $1 AND k = $2"),
            get_many: format!(
                "SELECT t.cf, t.k, t.v FROM UNNEST($1::text[], $2::bytea[]) AS q (cf, k)
                 JOIN {table} t ON t.cf = q.cf AND t.k = q.k"
            ),
            scan_from: format!(
                "SELECT k, v FROM {table} WHERE cf = $1 AND k >= $2 ORDER BY k LIMIT $3"
            ),
            scan_after: format!(
                "SELECT k, v FROM {table} WHERE cf = $1 AND k > $2 ORDER BY k LIMIT $3"
            ),
            upsert: format!(
                "INSERT INTO {table} (cf, k, v)
                 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[])
                 ON CONFLICT (cf, k) DO UPDATE SET v = EXCLUDED.v"
            ),
            delete: format!(
                "DELETE FROM {table} WHERE (cf, k) IN (SELECT * FROM UNNEST($1::text[], $2::bytea[]))"
            ),
        }
    }
}

/// `url` with `sslmode=verify-ca|verify-full` said as `require` (what tokio-postgres
/// knows; the certificate is verified either way), and whether it asks for TLS.
fn ssl_mode(url: &str) -> (String, bool) {
    let mode = url
        .split(['?', '&', ' '])
        .find_map(|part| part.strip_prefix("sslmode="))
        .unwrap_or("");
    let tls = matches!(mode, "require" | "verify-ca" | "verify-full");
    let url = match mode {
        "verify-ca" | "verify-full" => url.replace(&format!("sslmode={mode}"), "sslmode=require"),
        _ => url.to_string(),
    };
    (url, tls)
}

/// A PostgreSQL database holding the index's column families, as a [`KvEngine`].
pub struct PgEngine {
    /// Always `Some` but while dropped (see the `Drop` impl).
    rt: Option<tokio::runtime::Runtime>,
    pool: deadpool_postgres::Pool,
    sql: std::sync::Arc<Statements>,
    /// The connection of this process's writer while it holds the cluster write lock
    /// (in an open transaction).
    writer: Mutex<Option<deadpool_postgres::Object>>,
}

impl PgEngine {
    /// Connects to `url` (libpq-style; see the module docs) with `password`, and brings
    /// the schema to [`PG_SCHEMA_VERSION`]. A database whose schema is newer than this
    /// build is refused.
    pub fn open(url: &str, password: Option<&str>) -> Result<Self, IndexError> {
        Self::open_with(url, password, None)
    }

    /// [`PgEngine::open`], with TLS when `url` asks for it (`sslmode=require`,
    /// `verify-ca` or `verify-full`: the server's certificate verified against `ca_file`,
    /// else the system's roots, and for the host dialled; [`crate::tls::verifying_client`]).
    /// Without `sslmode` (or with `disable`, `allow`, `prefer`), no TLS: libpq's
    /// opportunistic `prefer` is not followed, as an unverified TLS session would only
    /// look safe.
    pub fn open_with(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, IndexError> {
        let (url, tls) = ssl_mode(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| storage("the [index] url is not a connection string", e))?;
        config.ssl_mode(if tls {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("strata");
        }
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager = if tls {
            let client = crate::tls::verifying_client(ca_file)
                .map_err(|e| storage("TLS to PostgreSQL", e))?;
            deadpool_postgres::Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new((*client).clone()),
                manager_config,
            )
        } else {
            deadpool_postgres::Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-pg")
            .enable_all()
            .build()
            .map_err(|e| storage("runtime", e))?;
        let pool = {
            let _entered = rt.enter();
            deadpool_postgres::Pool::builder(manager)
                .max_size(16)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| storage("pool", e))?
        };
        let engine = PgEngine {
            rt: Some(rt),
            pool,
            sql: std::sync::Arc::new(Statements::on(TABLE)),
            writer: Mutex::new(None),
        };
        // nodes starting together race to create the schema table (PostgreSQL's
        // `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent one): the loser
        // finds it made and goes on
        let mut tries = 0;
        loop {
            match engine.migrate() {
                Ok(()) => return Ok(engine),
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::debug!(error = %e, "PostgreSQL schema migration raced; again");
                    std::thread::sleep(std::time::Duration::from_millis(50 * tries));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// An engine on a new, empty table beside the index's ([`REBUILD_TABLE`], dropped
    /// first if an interrupted `reindex` left one), for `reindex` to build into and
    /// then [`PgEngine::swap_into_place`].
    pub fn open_rebuild(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, IndexError> {
        let mut engine = Self::open_with(url, password, ca_file)?;
        let pool = engine.pool.clone();
        engine.run(async move {
            let client = pool.get().await.map_err(|e| storage("connect", e))?;
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {REBUILD_TABLE};
                     CREATE TABLE {REBUILD_TABLE} (LIKE {TABLE} INCLUDING ALL);"
                ))
                .await
                .map_err(|e| storage("rebuild table", e))
        })?;
        engine.sql = std::sync::Arc::new(Statements::on(REBUILD_TABLE));
        Ok(engine)
    }

    /// Makes the table this engine built (`reindex`) the index, in one transaction: the
    /// old table goes, the rebuilt one takes its name. Other nodes see the old index or
    /// the new one, never a mix.
    pub fn swap_into_place(&self) -> Result<(), IndexError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(|e| storage("connect", e))?;
            client
                .batch_execute(&format!(
                    "BEGIN;
                     DROP TABLE {TABLE};
                     ALTER TABLE {REBUILD_TABLE} RENAME TO {TABLE};
                     COMMIT;"
                ))
                .await
                .map_err(|e| storage("swap in the rebuilt index", e))
        })
    }

    /// Drops the table this engine built (a `reindex` that keeps the current index).
    pub fn discard(&self) -> Result<(), IndexError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(|e| storage("connect", e))?;
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {REBUILD_TABLE}"))
                .await
                .map_err(|e| storage("drop the rebuilt index", e))
        })
    }

    /// Runs `f` on the engine's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, IndexError>> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the engine")
            .spawn(async move {
                let _ = tx.send(f.await);
            });
        rx.recv()
            .map_err(|_| IndexError::Storage("PostgreSQL: the call was dropped".into()))?
    }

    fn migrate(&self) -> Result<(), IndexError> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(|e| storage("connect", e))?;
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS strata_schema (id INT PRIMARY KEY, version INT NOT NULL);
                     INSERT INTO strata_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
                )
                .await
                .map_err(|e| storage("schema table", e))?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| storage("begin", e))?;
            let row = tx
                .query_one("SELECT version FROM strata_schema WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(|e| storage("schema version", e))?;
            let found: i32 = row.get(0);
            if found > PG_SCHEMA_VERSION {
                return Err(IndexError::Storage(format!(
                    "PostgreSQL index schema version {found} is newer than this build reads ({PG_SCHEMA_VERSION})"
                )));
            }
            for (n, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| storage(&format!("migration {}", n + 1), e))?;
            }
            tx.execute(
                "UPDATE strata_schema SET version = $1 WHERE id = 1",
                &[&PG_SCHEMA_VERSION],
            )
            .await
            .map_err(|e| storage("schema version", e))?;
            tx.commit().await.map_err(|e| storage("commit", e))
        })
    }

    /// Applies `batch` on `client` (in its open transaction, or one of its own when
    /// `own`), the last change of each key winning; commits.
    async fn apply(
        sql: &Statements,
        client: &mut deadpool_postgres::Object,
        batch: Batch,
        sync: bool,
        own: bool,
    ) -> Result<(), IndexError> {
        let mut last: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => last.insert((cf, key), Some(value)),
                BatchOp::Delete { cf, key } => last.insert((cf, key), None),
            };
        }
        let (mut put_cf, mut put_k, mut put_v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_cf, mut del_k) = (Vec::new(), Vec::new());
        for ((cf, key), value) in last {
            match value {
                Some(value) => {
                    put_cf.push(cf);
                    put_k.push(key);
                    put_v.push(value);
                }
                None => {
                    del_cf.push(cf);
                    del_k.push(key);
                }
            }
        }
        if own {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| storage("begin", e))?;
        }
        let work = async {
            if !sync {
                client
                    .batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(|e| storage("synchronous_commit", e))?;
            }
            if !put_cf.is_empty() {
                client
                    .execute(&sql.upsert, &[&put_cf, &put_k, &put_v])
                    .await
                    .map_err(|e| storage("write", e))?;
            }
            if !del_cf.is_empty() {
                client
                    .execute(&sql.delete, &[&del_cf, &del_k])
                    .await
                    .map_err(|e| storage("delete", e))?;
            }
            Ok::<(), IndexError>(())
        };
        match work.await {
            Ok(()) => client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| storage("commit", e)),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

impl Drop for PgEngine {
    /// Stops the engine's runtime without waiting: the last handle on an index may go in
    /// an async context, where a runtime must not be dropped the blocking way.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl KvEngine for PgEngine {
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let (pool, key, sql) = (self.pool.clone(), key.to_vec(), self.sql.clone());
        self.run(async move {
            let client = pool.get().await.map_err(|e| storage("connect", e))?;
            let row = client
                .query_opt(&sql.get, &[&cf, &key])
                .await
                .map_err(|e| storage("read", e))?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn get_many(
        &self,
        keys: &[(&'static str, Vec<u8>)],
    ) -> Result<Vec<Option<Vec<u8>>>, IndexError> {
        let cfs: Vec<&str> = keys.iter().map(|(cf, _)| *cf).collect();
        let ks: Vec<Vec<u8>> = keys.iter().map(|(_, k)| k.clone()).collect();
        let (pool, sql) = (self.pool.clone(), self.sql.clone());
        let found: std::collections::HashMap<(String, Vec<u8>), Vec<u8>> =
            self.run(async move {
                let client = pool.get().await.map_err(|e| storage("connect", e))?;
                let rows = client
                    .query(&sql.get_many, &[&cfs, &ks])
                    .await
                    .map_err(|e| storage("read", e))?;
                Ok(rows
                    .into_iter()
                    .map(|r| ((r.get::<_, String>(0), r.get(1)), r.get(2)))
                    .collect())
            })?;
        Ok(keys
            .iter()
            .map(|(cf, k)| found.get(&(cf.to_string(), k.clone())).cloned())
            .collect())
    }

    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), IndexError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (start, inclusive) = match &after {
                None => (from.to_vec(), true),
                Some(last) => (last.clone(), false),
            };
            let (pool, sql) = (self.pool.clone(), self.sql.clone());
            let rows: Vec<(Vec<u8>, Vec<u8>)> = self.run(async move {
                let client = pool.get().await.map_err(|e| storage("connect", e))?;
                let statement = if inclusive {
                    &sql.scan_from
                } else {
                    &sql.scan_after
                };
                let rows = client
                    .query(statement, &[&cf, &start, &SCAN_PAGE])
                    .await
                    .map_err(|e| storage("scan", e))?;
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            })?;
            let full = rows.len() as i64 == SCAN_PAGE;
            for (k, v) in &rows {
                if !visit(k, v)? {
                    return Ok(());
                }
            }
            match rows.into_iter().last() {
                Some((k, _)) if full => after = Some(k),
                _ => return Ok(()),
            }
        }
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<(), IndexError> {
        // under the cluster write lock: in its transaction, which the commit ends
        let held = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let (pool, sql) = (self.pool.clone(), self.sql.clone());
        self.run(async move {
            match held {
                Some(mut client) => Self::apply(&sql, &mut client, batch, sync, false).await,
                None => {
                    let mut client = pool.get().await.map_err(|e| storage("connect", e))?;
                    Self::apply(&sql, &mut client, batch, sync, true).await
                }
            }
        })
    }

    fn lock_writes(&self) -> Result<(), IndexError> {
        let pool = self.pool.clone();
        let client = self.run(async move {
            let client = pool.get().await.map_err(|e| storage("connect", e))?;
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| storage("begin", e))?;
            if let Err(e) = client
                .query_one(
                    "SELECT id FROM strata_write_lock WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await
            {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(storage("write lock", e));
            }
            Ok(client)
        })?;
        *self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(client);
        Ok(())
    }

    fn unlock_writes(&self) {
        let held = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(client) = held {
            // a writer that wrote nothing (refused, or failed before its batch)
            let _ = self.run(async move {
                client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| storage("rollback", e))
            });
        }
    }

    fn shared(&self) -> bool {
        true
    }
}

impl KvIndex<PgEngine> {
    /// The index in the PostgreSQL database at `url` (see [`PgEngine::open`]).
    pub fn open_postgres(url: &str, password: Option<&str>) -> Result<Self, IndexError> {
        KvIndex::open(PgEngine::open(url, password)?, true)
    }

    /// [`PgIndex::open_postgres`] over TLS when `url` asks for it
    /// ([`PgEngine::open_with`]).
    pub fn open_postgres_with(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, IndexError> {
        KvIndex::open(PgEngine::open_with(url, password, ca_file)?, true)
    }

    /// A new, empty index beside the one at `url`, for `reindex`
    /// ([`PgEngine::open_rebuild`]).
    pub fn open_postgres_rebuild(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, IndexError> {
        KvIndex::open(PgEngine::open_rebuild(url, password, ca_file)?, true)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::index::prelude::*;
    use std::path::PathBuf;

    /// A throwaway PostgreSQL cluster (`tests/peers/postgres.sh`), stopped by pid when
    /// dropped.
    pub(crate) struct Cluster {
        pub dir: PathBuf,
        pub port: u16,
        _parent: tempfile::TempDir,
    }

    impl Cluster {
        pub fn start() -> Self {
            let parent = tempfile::tempdir().unwrap();
            let dir = parent.path().join("pg");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/postgres.sh");
            let out = std::process::Command::new("bash")
                .arg(script)
                .arg("start")
                .arg(&dir)
                .arg(port.to_string())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "PostgreSQL did not start (Debian postgresql-15, run as root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Cluster {
                dir,
                port,
                _parent: parent,
            }
        }

        /// A new, empty database; its URL.
        pub fn database(&self, name: &str) -> String {
            let out = std::process::Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/postgres.sh");
            let _ = std::process::Command::new("bash")
                .arg(script)
                .arg("stop")
                .arg(&self.dir)
                .status();
        }
    }

    /// The index conformance suite on PostgreSQL: every check on a fresh database.
    #[test]
    fn postgres_index_passes_the_conformance_suite() {
        let cluster = Cluster::start();
        let n = std::sync::atomic::AtomicUsize::new(0);
        crate::index::conformance::run_suite(&|| {
            let name = format!(
                "conformance_{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            let index = PgIndex::open_postgres(&cluster.database(&name), None).unwrap();
            (Box::new(index) as Box<dyn crate::index::Index>, None)
        });
    }

    /// Two nodes (two engines on one database) writing into the same study at once lose
    /// no update: the cluster write lock serialises their read-modify-writes. Opening
    /// both at once applies the schema migration once.
    #[test]
    fn two_nodes_writing_one_study_lose_no_update() {
        let cluster = Cluster::start();
        let url = cluster.database("nodes");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| PgIndex::open_postgres(&url, None).unwrap());
            let b = s.spawn(|| PgIndex::open_postgres(&url, None).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        let per_node = 40;
        std::thread::scope(|s| {
            for (node, index) in [(0, &a), (1, &b)] {
                s.spawn(move || {
                    for i in 0..per_node {
                        let sop = format!("5.1.1.{node}{i:03}");
                        let o = crate::index::conformance::object(
                            "5.1",
                            "5.1.1",
                            &sop,
                            sop.as_bytes(),
                            i as u64,
                        );
                        index.commit(&[o]).unwrap();
                    }
                });
            }
        });
        for index in [&a, &b] {
            let study = index.study("5.1").unwrap().unwrap();
            assert_eq!(study.instances, 2 * per_node as u64);
            assert_eq!(index.series("5.1.1").unwrap().unwrap().1.instances, 80);
            assert_eq!(index.tier_totals().unwrap().hot_objects, 80);
        }
    }
}
