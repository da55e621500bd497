//! Test harness: a private PostgreSQL cluster (or the one scripts/test-sidecar.sh
//! started), one database per test with the extension, fake upstreams on
//! 127.0.0.1, and the sidecar binary as a child process. Every wait is bounded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio_postgres::{Client, NoTls};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn shared_data() -> Option<PathBuf> {
    let base = std::env::var_os("KILLBOARD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"));
    let d = base.join("data");
    d.is_dir().then_some(d)
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

pub struct Pg {
    pub port: u16,
}

static PG: OnceLock<Result<Pg, String>> = OnceLock::new();

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var("KILLBOARD_TEST_PG_BINDIR")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(name)
}

fn postgres_ids() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Start a throwaway cluster owned by the `postgres` user; it dies with this
/// test process (PR_SET_PDEATHSIG), so nothing is left running.
fn start_private_cluster() -> Result<Pg, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: set KILLBOARD_TEST_PGPORT or run scripts/test-sidecar.sh".into());
    }
    let (uid, gid) = postgres_ids().ok_or("no postgres OS user")?;
    if !pg_bin("initdb").exists() {
        return Err(format!("{} not found", pg_bin("initdb").display()));
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Clusters of earlier runs died with their test process; drop their files.
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name
                .strip_prefix("sidecar-pg-")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = tmp.join(format!("sidecar-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let chown = |p: &Path| unsafe {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
        libc::chown(c.as_ptr(), uid, gid)
    };
    chown(&dir);
    let data = dir.join("data");
    use std::os::unix::process::CommandExt;
    let out = Command::new(pg_bin("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .uid(uid)
        .gid(gid)
        .current_dir(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = dir.join("postgres.log");
    // PDEATHSIG fires when the spawning *thread* exits, so spawn from a thread
    // that lives as long as the process.
    std::thread::spawn(move || {
        let logf = std::fs::File::create(&log).ok();
        let mut cmd = Command::new(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-k",
                "/tmp",
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
            ])
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(f) = logf {
            cmd.stderr(f);
        }
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn().map(|c| c.id()).map_err(|e| e.to_string()));
        loop {
            std::thread::park();
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    Ok(Pg { port })
}

pub fn pg() -> Result<&'static Pg, String> {
    PG.get_or_init(|| {
        match std::env::var("KILLBOARD_TEST_PGPORT")
            .ok()
            .and_then(|p| p.parse().ok())
        {
            Some(port) => Ok(Pg { port }),
            None => start_private_cluster(),
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

pub fn url(port: u16, db: &str) -> String {
    format!("postgresql://postgres@127.0.0.1:{port}/{db}")
}

pub async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect to the test cluster: {e}"),
        }
    }
}

pub fn pgerr(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

static EXTENSION_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct TestDb {
    pub url: String,
    pub client: Client,
    pub has_ingest: bool,
}

/// A fresh database with the extension. Err(reason) means "skip".
pub async fn test_db(name: &str) -> Result<TestDb, String> {
    let pg = pg()?;
    let admin = connect(&url(pg.port, "postgres")).await;
    let available = admin
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_killboard'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    let sql_only = std::env::var("KILLBOARD_TEST_SQL_ONLY").is_ok_and(|v| v == "1");
    if !available && !sql_only {
        return Err("extension pg_killboard is not installed (cargo pgrx install, or KILLBOARD_TEST_SQL_ONLY=1 while developing)".into());
    }
    let db = format!("sidecar_{name}");
    // Separate statements: CREATE DATABASE cannot run in the implicit transaction of a batch.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .map_err(pgerr)?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .map_err(pgerr)?;
    let u = url(pg.port, &db);
    let client = connect(&u).await;
    if available && !sql_only {
        // CREATE EXTENSION also creates cluster-wide roles; two databases
        // doing it at once race on pg_authid, so tests take turns.
        let _turn = EXTENSION_LOCK.lock().await;
        client
            .batch_execute("CREATE EXTENSION pg_killboard CASCADE")
            .await
            .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_killboard: {}", pgerr(e)));
    } else {
        // Development only: the extension's SQL files without its Rust functions.
        let mut sql = String::from("CREATE SCHEMA killboard;\n");
        for f in ["schema.sql", "sde.sql", "caches.sql"] {
            sql.push_str(
                &std::fs::read_to_string(repo_root().join("sql").join(f))
                    .map_err(|e| e.to_string())?,
            );
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| format!("loading sql/: {}", pgerr(e)))?;
    }
    let has_ingest = client
        .query_one("SELECT to_regprocedure('killboard.ingest(jsonb)') IS NOT NULL AND to_regprocedure('killboard.verify_stats(integer)') IS NOT NULL", &[])
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    Ok(TestDb {
        url: u,
        client,
        has_ingest,
    })
}

#[macro_export]
macro_rules! db_or_skip {
    ($name:expr) => {
        match $crate::support::test_db($name).await {
            Ok(db) => db,
            Err(reason) => {
                eprintln!("SKIPPED {}: {}", $name, reason);
                return;
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Fake upstream
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Logged {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub enum Reply {
    Json(u16, Vec<(&'static str, String)>, String),
    Hang,
}

pub fn ok_json(v: serde_json::Value) -> Reply {
    Reply::Json(200, vec![], v.to_string())
}

pub type Handler = Arc<dyn Fn(&Logged, usize) -> Reply + Send + Sync>;

pub struct Fake {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Logged>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// `handler(request, n)`: n counts earlier requests with the same method and path.
    pub async fn start(handler: Handler) -> Fake {
        let log: Arc<Mutex<Vec<Logged>>> = Arc::default();
        let l2 = log.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (log, handler) = (l2.clone(), handler.clone());
                async move {
                    let req = Logged {
                        at: Instant::now(),
                        method,
                        path: uri.path().to_string(),
                        query: uri.query().unwrap_or("").to_string(),
                        headers,
                        body,
                    };
                    let n = {
                        let mut g = log.lock().unwrap();
                        let n = g
                            .iter()
                            .filter(|r| r.method == req.method && r.path == req.path)
                            .count();
                        g.push(req.clone());
                        n
                    };
                    match handler(&req, n) {
                        Reply::Json(status, headers, body) => {
                            let mut resp: Response =
                                (StatusCode::from_u16(status).unwrap(), body).into_response();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            for (k, v) in headers {
                                resp.headers_mut().insert(k, v.parse().unwrap());
                            }
                            resp
                        }
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            StatusCode::GATEWAY_TIMEOUT.into_response()
                        }
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { addr, log, task }
    }

    pub fn base(&self, prefix: &str) -> String {
        format!("http://{}/{}", self.addr, prefix.trim_matches('/'))
    }

    pub fn requests(&self, method: &str, path_suffix: &str) -> Vec<Logged> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == method && r.path.ends_with(path_suffix))
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// Sidecar process
// ---------------------------------------------------------------------------

pub struct Sidecar {
    pub child: Child,
    pub metrics_addr: String,
    pub log_path: PathBuf,
}

impl Sidecar {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Wait for exit, bounded.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawn `killboard-sidecar <command>` with test-friendly defaults; `extra`
/// overrides any default flag.
pub fn spawn_sidecar(
    command: &[&str],
    db_url: &str,
    fake: Option<&Fake>,
    extra: &[(&str, &str)],
    tag: &str,
) -> Sidecar {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        flags.insert(k.to_string(), v);
    };
    set("--database-url", db_url.to_string());
    set("--metrics-addr", metrics_addr.clone());
    set("--http-timeout-ms", "2000".into());
    set("--backoff-base-ms", "100".into());
    set("--backoff-max-ms", "400".into());
    set("--throttle-default-ms", "1000".into());
    if command[0] == "run" {
        set("--poll-ms", "100".into());
        set("--stats-interval-ms", "100".into());
        set("--esi-rps", "1000".into());
        set("--janice-rps", "1000".into());
        set("--mutamarket-rps", "1000".into());
        if let Some(f) = fake {
            set("--esi-url", f.base("esi"));
            set("--janice-url", f.base("janice"));
            set("--mutamarket-url", f.base("muta"));
            set("--janice-key", "test-secret-key".into());
        }
    } else if command[0] == "feed" {
        set("--r2z2-rps", "500".into());
        set("--feed-wait-ms", "50".into());
        if let Some(f) = fake {
            set("--r2z2-url", f.base("r2z2"));
        }
    }
    for (k, v) in extra {
        set(k, v.to_string());
    }
    let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sidecar-{tag}-{}.log", std::process::id()));
    let logf = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_killboard-sidecar"));
    cmd.args(command);
    for (k, v) in &flags {
        cmd.arg(format!("{k}={v}"));
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("KILLBOARD_") && k != "KILLBOARD_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("KILLBOARD_LOG", "info,killboard_sidecar=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    let child = cmd.spawn().expect("spawn killboard-sidecar");
    Sidecar {
        child,
        metrics_addr,
        log_path,
    }
}

/// Poll `cond` every 50 ms until it holds or `limit` passes.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", pgerr(e)))
        .get(0)
}

// ---------------------------------------------------------------------------
// Prometheus text format (exposition format 0.0.4), parsed strictly
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(n), _) if valid_name(n) => {}
                (Some("TYPE"), Some(n), Some(t)) if valid_name(n) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(err("bad type"));
                    }
                    types.insert(n.to_string(), t.to_string());
                }
                _ => return Err(err("bad comment")),
            }
            continue;
        }
        let (name_end, has_labels) = match line.find(['{', ' ']) {
            Some(p) => (p, line.as_bytes()[p] == b'{'),
            None => return Err(err("no value")),
        };
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if has_labels {
            rest = &rest[1..];
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or_else(|| err("label without ="))?;
                let lname = &rest[..eq];
                if !valid_name(lname) {
                    return Err(err("bad label name"));
                }
                let mut chars = rest[eq + 1..].char_indices();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted"));
                }
                let mut value = String::new();
                let mut end = None;
                let mut escaped = false;
                for (j, c) in chars {
                    if escaped {
                        value.push(match c {
                            'n' => '\n',
                            other => other,
                        });
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        end = Some(eq + 1 + j + 1);
                        break;
                    } else {
                        value.push(c);
                    }
                }
                let end = end.ok_or_else(|| err("unterminated label value"))?;
                labels.insert(lname.to_string(), value);
                rest = &rest[end..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let mut fields = rest.split_whitespace();
        let v = fields.next().ok_or_else(|| err("no value"))?;
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => v.parse::<f64>().map_err(|_| err("bad value"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| {
                    types
                        .get(*f)
                        .is_some_and(|t| t == "histogram" || t == "summary")
                })
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err("sample without # TYPE"));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
