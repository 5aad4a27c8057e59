//! Settings in one place: defaults, a TOML file (`--config`, `KYU_CONFIG`),
//! the environment (`KYU_*`), and flags, in that order of precedence, merged
//! by figment. A flag always overrides the same setting from the
//! environment, and a file key kyu does not know is an error naming the key.
//!
//! The file's top-level keys are named like the long flags (`listen`,
//! `tokens`, `database`, ...); `kyu work`'s settings live in a `[work]`
//! table. `kyu server --print-config` and `kyu work --print-config` show each
//! setting in force and where it came from.

use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::args::{Cli, Command, ServerArgs, WorkArgs, parse_duration};
use crate::error::CliError;

/// A duration written `500ms`, `30s`, `5m`, `2h`, `7d`, or a whole number of
/// milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&human(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(Dur(Duration::from_millis(ms))),
            Raw::Text(t) => parse_duration(&t).map(Dur).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration the way people write it.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A list written as an array, or as one comma-separated string (as an
/// environment variable holds it: `KYU_QUEUES=mail,reports`).
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Many(Vec<String>),
        One(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Many(v) => v,
        Raw::One(s) => s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect(),
    })
}

/// Every setting of every layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A SQLite path or a postgres:// URL.
    pub database: String,
    /// A kyu server to talk to instead of a database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Bearer token for `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// A CA certificate (PEM) to trust for `https://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// `kyu server`'s listen address.
    pub listen: String,
    /// API tokens, `ROLE:SECRET`.
    #[serde(deserialize_with = "list")]
    pub tokens: Vec<String>,
    pub insecure: bool,
    pub keep_result: Dur,
    pub keep_failed: Dur,
    pub max_payload: usize,
    pub max_body: usize,
    pub long_poll_cap: Dur,
    pub max_connections: usize,
    pub header_timeout: Dur,
    pub kill_grace: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    pub work: WorkConfig,
}

/// `kyu work`'s settings (the `[work]` table).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkConfig {
    #[serde(deserialize_with = "list")]
    pub queues: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
    pub lease: Dur,
    pub poll: Dur,
    pub grace: Dur,
    pub kill_grace: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u64>,
    pub burst: bool,
    pub max_result: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// The command, when not given after `--`.
    #[serde(default, deserialize_with = "list_or_words", skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// A command as an array (`["python", "handle.py"]`), or as a string split
/// on white space.
fn list_or_words<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Many(Vec<String>),
        One(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Many(v) => v,
        Raw::One(s) => s.split_whitespace().map(String::from).collect(),
    })
}

impl Default for Config {
    fn default() -> Config {
        Config {
            database: "./kyu.db".into(),
            url: None,
            auth: None,
            cacert: None,
            listen: "127.0.0.1:7700".into(),
            tokens: Vec::new(),
            insecure: false,
            keep_result: Dur(Duration::from_secs(24 * 3600)),
            keep_failed: Dur(Duration::from_secs(7 * 24 * 3600)),
            max_payload: 1 << 20,
            max_body: 16 << 20,
            long_poll_cap: Dur(Duration::from_secs(60)),
            max_connections: 1024,
            header_timeout: Dur(Duration::from_secs(10)),
            kill_grace: Dur(Duration::from_secs(10)),
            tls_cert: None,
            tls_key: None,
            work: WorkConfig {
                queues: vec!["default".into()],
                concurrency: None,
                batch: None,
                prefetch: None,
                lease: Dur(Duration::from_secs(30)),
                poll: Dur(Duration::from_millis(200)),
                grace: Dur(Duration::from_secs(30)),
                kill_grace: Dur(Duration::from_secs(10)),
                name: None,
                max_jobs: None,
                burst: false,
                max_result: 1 << 20,
                metrics: None,
                command: Vec::new(),
            },
        }
    }
}

/// Environment variables and the settings they set. `KYU_KILL_GRACE` sets
/// both the server's and `kyu work`'s, which mean the same grace.
const ENV: &[(&str, &[&str])] = &[
    ("KYU_DATABASE_URL", &["database"]),
    ("KYU_URL", &["url"]),
    ("KYU_TOKEN", &["auth"]),
    ("KYU_CACERT", &["cacert"]),
    ("KYU_LISTEN", &["listen"]),
    ("KYU_TOKENS", &["tokens"]),
    ("KYU_INSECURE", &["insecure"]),
    ("KYU_KEEP_RESULT", &["keep_result"]),
    ("KYU_KEEP_FAILED", &["keep_failed"]),
    ("KYU_MAX_PAYLOAD", &["max_payload"]),
    ("KYU_MAX_BODY", &["max_body"]),
    ("KYU_LONG_POLL_CAP", &["long_poll_cap"]),
    ("KYU_MAX_CONNECTIONS", &["max_connections"]),
    ("KYU_HEADER_TIMEOUT", &["header_timeout"]),
    ("KYU_KILL_GRACE", &["kill_grace", "work.kill_grace"]),
    ("KYU_TLS_CERT", &["tls_cert"]),
    ("KYU_TLS_KEY", &["tls_key"]),
    ("KYU_METRICS", &["work.metrics"]),
    ("KYU_QUEUES", &["work.queues"]),
    ("KYU_CONCURRENCY", &["work.concurrency"]),
    ("KYU_BATCH", &["work.batch"]),
    ("KYU_PREFETCH", &["work.prefetch"]),
    ("KYU_LEASE", &["work.lease"]),
    ("KYU_POLL", &["work.poll"]),
    ("KYU_GRACE", &["work.grace"]),
    ("KYU_WORKER_NAME", &["work.name"]),
    ("KYU_MAX_JOBS", &["work.max_jobs"]),
    ("KYU_BURST", &["work.burst"]),
    ("KYU_MAX_RESULT", &["work.max_result"]),
    ("KYU_COMMAND", &["work.command"]),
];

/// A provider under a name of ours (`--print-config` shows it).
struct Named<P> {
    name: String,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// The environment layer: only kyu's own variables, each to its settings.
fn env_layer() -> Figment {
    let mut f = Figment::new();
    for (var, keys) in ENV {
        for key in *keys {
            let (var, key) = (*var, *key);
            let provider = Env::raw().only(&[var]).map(move |_| key.into());
            f = f.merge(Named { name: format!("environment ({var})"), inner: provider });
        }
    }
    f
}

/// The flags that were given, as settings.
fn flags(cli: &Cli) -> Dict {
    let mut d = Dict::new();
    let mut put = |key: &str, v: Value| {
        let mut path = key.split('.').collect::<Vec<_>>();
        let last = path.pop().expect("a key");
        let mut at = &mut d;
        for p in path {
            at = match at.entry(p.to_owned()).or_insert_with(|| Value::from(Dict::new())) {
                Value::Dict(_, inner) => inner,
                _ => unreachable!("nested keys are tables"),
            };
        }
        at.insert(last.to_owned(), v);
    };
    let dur = |d: Duration| Value::from(human(d));
    let path = |p: &PathBuf| Value::from(p.display().to_string());
    if let Some(v) = &cli.database {
        put("database", Value::from(v.clone()));
    }
    if let Some(v) = &cli.url {
        put("url", Value::from(v.clone()));
    }
    if let Some(v) = &cli.auth {
        put("auth", Value::from(v.clone()));
    }
    if let Some(v) = &cli.cacert {
        put("cacert", path(v));
    }
    match &cli.command {
        Command::Server(a) => server_flags(a, &mut put, dur, path),
        Command::Work(a) => work_flags(a, &mut put, dur),
        _ => {}
    }
    d
}

fn server_flags(a: &ServerArgs, put: &mut impl FnMut(&str, Value), dur: impl Fn(Duration) -> Value, path: impl Fn(&PathBuf) -> Value) {
    if let Some(v) = &a.listen {
        put("listen", Value::from(v.clone()));
    }
    if !a.tokens.is_empty() {
        put("tokens", Value::from(a.tokens.clone()));
    }
    if a.insecure {
        put("insecure", Value::from(true));
    }
    for (k, v) in [("keep_result", a.keep_result), ("keep_failed", a.keep_failed), ("long_poll_cap", a.long_poll_cap), ("header_timeout", a.header_timeout), ("kill_grace", a.kill_grace)] {
        if let Some(v) = v {
            put(k, dur(v));
        }
    }
    for (k, v) in [("max_payload", a.max_payload), ("max_body", a.max_body), ("max_connections", a.max_connections)] {
        if let Some(v) = v {
            put(k, Value::from(v as u64));
        }
    }
    if let Some(v) = &a.tls_cert {
        put("tls_cert", path(v));
    }
    if let Some(v) = &a.tls_key {
        put("tls_key", path(v));
    }
}

fn work_flags(a: &WorkArgs, put: &mut impl FnMut(&str, Value), dur: impl Fn(Duration) -> Value) {
    if !a.queues.is_empty() {
        put("work.queues", Value::from(a.queues.clone()));
    }
    for (k, v) in [("work.concurrency", a.concurrency), ("work.batch", a.batch), ("work.prefetch", a.prefetch), ("work.max_result", a.max_result)] {
        if let Some(v) = v {
            put(k, Value::from(v as u64));
        }
    }
    for (k, v) in [("work.lease", a.lease), ("work.poll", a.poll), ("work.grace", a.grace), ("work.kill_grace", a.kill_grace)] {
        if let Some(v) = v {
            put(k, dur(v));
        }
    }
    if let Some(v) = &a.name {
        put("work.name", Value::from(v.clone()));
    }
    if let Some(v) = a.max_jobs {
        put("work.max_jobs", Value::from(v));
    }
    if a.burst {
        put("work.burst", Value::from(true));
    }
    if let Some(v) = &a.metrics {
        put("work.metrics", Value::from(v.clone()));
    }
    if !a.command.is_empty() {
        put("work.command", Value::from(a.command.clone()));
    }
}

/// The settings in force and the figment that made them (for sources).
pub struct Resolved {
    pub config: Config,
    figment: Figment,
}

/// Merges every layer for this command line.
pub fn resolve(cli: &Cli) -> Result<Resolved, CliError> {
    let mut figment = Figment::from(Named { name: "default".into(), inner: Serialized::defaults(Config::default()) });
    let file = cli.config.clone().or_else(|| std::env::var("KYU_CONFIG").ok().filter(|v| !v.is_empty()).map(PathBuf::from));
    if let Some(file) = &file {
        if !file.is_file() {
            return Err(CliError::Usage(format!("config file {} does not exist", file.display())));
        }
        figment = figment.merge(Named { name: format!("file {}", file.display()), inner: Toml::file_exact(file) });
    }
    figment = figment.merge(env_layer()).merge(Named { name: "flag".into(), inner: Serialized::globals(flags(cli)) });
    let config: Config = figment.extract().map_err(|e| CliError::Usage(config_error(e)))?;
    Ok(Resolved { config, figment })
}

/// Figment's error, said the way kyu says things.
fn config_error(e: figment::Error) -> String {
    let mut out = Vec::new();
    for e in e {
        let at = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
        let key = e.path.join(".");
        let what = match &e.kind {
            figment::error::Kind::UnknownField(f, _) => format!("unknown setting `{}`", if key.is_empty() { f.clone() } else { key.clone() }),
            other => format!("{key}: {other}"),
        };
        out.push(if at.is_empty() { what } else { format!("{what} (from {at})") });
    }
    out.join("; ")
}

impl Resolved {
    /// Where a setting came from: `default`, `file PATH`,
    /// `environment (VAR)` or `flag`.
    pub fn source(&self, key: &str) -> String {
        self.figment.find_metadata(key).map_or_else(|| "default".into(), |m| m.name.to_string())
    }

    /// How strongly a setting was given: flag 3, environment 2, file 1, default 0.
    fn rank(&self, key: &str) -> u8 {
        let s = self.source(key);
        if s == "flag" {
            3
        } else if s.starts_with("environment") {
            2
        } else if s.starts_with("file") {
            1
        } else {
            0
        }
    }

    /// Whether commands talk to a server: `url` when it was given more
    /// strongly than `database` (a flag beats the environment, so
    /// `KYU_DATABASE_URL` in a shared environment file and `--url` on the
    /// command line work together). Both given alike is a usage error.
    pub fn server_url(&self) -> Result<Option<String>, CliError> {
        let Some(url) = &self.config.url else { return Ok(None) };
        let (u, d) = (self.rank("url"), self.rank("database"));
        if u == d {
            return Err(CliError::Usage(format!(
                "both a server URL and a database were given ({}); give one of --url and --database",
                self.source("url")
            )));
        }
        Ok((u > d).then(|| url.clone()))
    }

    /// Prints each named setting, its value (secrets masked) and its
    /// source; with `json`, one object `{"KEY": {"value", "source"}}`.
    pub fn print(&self, keys: &[&str], json: bool) {
        let value = serde_json::to_value(&self.config).unwrap_or_default();
        if json {
            let mut out = serde_json::Map::new();
            for key in keys {
                let mut v = key.split('.').fold(&value, |v, k| &v[k]).clone();
                if *key == "auth" && !v.is_null() {
                    v = serde_json::Value::from("***");
                }
                if *key == "tokens"
                    && let serde_json::Value::Array(items) = &v
                {
                    v = items
                        .iter()
                        .map(|t| t.as_str().and_then(|t| t.split_once(':')).map_or("?".into(), |(role, _)| format!("{role}:***")))
                        .collect();
                }
                out.insert((*key).to_owned(), serde_json::json!({"value": v, "source": self.source(key)}));
            }
            println!("{}", serde_json::Value::Object(out));
            return;
        }
        for key in keys {
            let v = key.split('.').fold(&value, |v, k| &v[k]);
            let shown = match (*key, v) {
                ("tokens", serde_json::Value::Array(items)) if items.is_empty() => "(none: loopback only)".to_owned(),
                ("tokens", serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|t| t.as_str().and_then(|t| t.split_once(':')).map_or("?".into(), |(role, _)| format!("{role}:***")))
                    .collect::<Vec<_>>()
                    .join(","),
                ("auth", serde_json::Value::String(_)) => "***".to_owned(),
                (_, serde_json::Value::Null) => "(unset)".to_owned(),
                (_, serde_json::Value::String(s)) => s.clone(),
                (_, other) => other.to_string(),
            };
            println!("{key:<18} {shown:<40} ({})", self.source(key));
        }
    }
}

/// The settings `kyu server --print-config` shows.
pub const SERVER_KEYS: &[&str] = &[
    "database",
    "listen",
    "tokens",
    "insecure",
    "tls_cert",
    "tls_key",
    "keep_result",
    "keep_failed",
    "max_payload",
    "max_body",
    "long_poll_cap",
    "max_connections",
    "header_timeout",
    "kill_grace",
];

/// The settings `kyu work --print-config` shows.
pub const WORK_KEYS: &[&str] = &[
    "database",
    "url",
    "cacert",
    "work.queues",
    "work.concurrency",
    "work.batch",
    "work.prefetch",
    "work.lease",
    "work.poll",
    "work.grace",
    "work.kill_grace",
    "work.name",
    "work.max_jobs",
    "work.burst",
    "work.max_result",
    "work.metrics",
    "work.command",
];
