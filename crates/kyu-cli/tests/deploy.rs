//! Deployment: TLS to PostgreSQL and HTTPS, settings layers, systemd units,
//! and the CLI as scripts and people meet it.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{Kyu, Proc, free_port, terminate};

fn tls_file(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests with scripts/test, which makes the test certificates"))
}

/// A `kyu server` over HTTPS with the test certificate; its URL.
fn https_server(k: &Kyu, log: &str, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cert = tls_file("KYU_TEST_TLS_CERT");
    let key = tls_file("KYU_TEST_TLS_KEY");
    let mut args = vec!["server", "--listen", listen.as_str(), "--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    args.extend_from_slice(extra);
    let server = k.spawn(log, &args);
    k.wait_log(log, "kyu server listening");
    (server, format!("https://{listen}"))
}

#[test]
fn https_server_cli_and_worker_with_cacert() {
    let k = Kyu::new();
    let (server, url) = https_server(&k, "server", &[]);
    let ca = tls_file("KYU_TEST_TLS_CA");
    // Without the CA the certificate is not trusted, and the error says what to do.
    let out = k.run(&["--url", &url, "queues"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cacert"), "{err}");
    // With it (flag or environment), everything works over HTTPS.
    k.ok(&["--url", &url, "--cacert", &ca, "enqueue", "tls", "echo", "21", "--id", "h1"]);
    let mut work = k.command(&["--url", &url, "work", "-q", "tls", "--max-jobs", "1", "--", "sh", "-c", "echo $(( $(cat) * 2 ))"]);
    work.env("KYU_CACERT", &ca);
    assert!(work.status().unwrap().success());
    assert_eq!(k.json(&["--url", &url, "--cacert", &ca, "status", "h1"])["result"], 42);
    // SIGHUP reloads the certificate without a restart.
    Command::new("kill").args(["-HUP", &server.id().to_string()]).status().unwrap();
    k.wait_log("server", "TLS certificate reloaded");
    assert_eq!(k.json(&["--url", &url, "--cacert", &ca, "queues"])["queues"][0]["name"], "tls");
    assert!(terminate(server).success());
}

#[test]
fn server_and_worker_on_postgres_over_verified_tls() {
    let k = Kyu::postgres();
    let ca = tls_file("KYU_TEST_TLS_CA");
    let db = format!("{}&sslmode=verify-full&sslrootcert={ca}", k.db());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = k.spawn("server", &["--database", &db, "server", "--listen", &listen]);
    k.wait_log("server", "kyu server listening");
    let url = format!("http://{listen}");
    k.ok(&["--url", &url, "enqueue", "pgtls", "k", "1", "--id", "p1"]);
    let mut work = k.command(&["--database", &db, "work", "-q", "pgtls", "--max-jobs", "1", "--", "cat"]);
    assert!(work.status().unwrap().success());
    assert_eq!(k.json(&["--url", &url, "status", "p1"])["state"], "completed");
    assert!(terminate(server).success());
    // An untrusted certificate is refused, clearly.
    let out = k.run(&["--database", &format!("{}&sslmode=verify-full", k.db()), "queues"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslmode=verify-full") && err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn require_against_a_server_without_tls_is_a_clear_error() {
    // A server that declines TLS, as PostgreSQL with ssl=off answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut req = [0u8; 8];
            if s.read_exact(&mut req).is_ok() {
                let _ = s.write_all(b"N");
            }
        }
    });
    let k = Kyu::new();
    let out = k.run(&["--database", &format!("postgres://kyu@127.0.0.1:{port}/kyu?sslmode=require"), "queues"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslmode=require") && err.contains("TLS"), "{err}");
}

/// The value and source `--print-config --json` shows for `key`.
fn shown(out: &str, key: &str) -> (String, String) {
    let all: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let v = &all[key]["value"];
    let value = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
    (value, all[key]["source"].as_str().unwrap().to_owned())
}

#[test]
fn settings_layers_default_file_environment_flag() {
    let k = Kyu::new();
    std::fs::write(
        k.path("kyu.toml"),
        "listen = \"127.0.0.1:7001\"\nkeep_result = \"2h\"\nmax_body = 5000000\n[work]\nconcurrency = 3\nlease = \"10s\"\nqueues = [\"a\", \"b\"]\n",
    )
    .unwrap();
    let server = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["--json", "--config", "kyu.toml", "server", "--print-config"];
        args.extend_from_slice(flags);
        let mut c = k.command(&args);
        for (name, v) in env {
            c.env(name, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out = server(&[], &[]);
    assert_eq!(shown(&out, "listen"), ("127.0.0.1:7001".into(), "file kyu.toml".into()));
    assert_eq!(shown(&out, "keep_result"), ("2h".into(), "file kyu.toml".into()));
    assert_eq!(shown(&out, "keep_failed"), ("7d".into(), "default".into()));
    let out = server(&[("KYU_LISTEN", "127.0.0.1:7002"), ("KYU_KEEP_FAILED", "3d")], &[]);
    assert_eq!(shown(&out, "listen"), ("127.0.0.1:7002".into(), "environment (KYU_LISTEN)".into()));
    assert_eq!(shown(&out, "keep_failed"), ("3d".into(), "environment (KYU_KEEP_FAILED)".into()));
    assert_eq!(shown(&out, "max_body"), ("5000000".into(), "file kyu.toml".into()));
    let out = server(&[("KYU_LISTEN", "127.0.0.1:7002")], &["--listen", "127.0.0.1:7003"]);
    assert_eq!(shown(&out, "listen"), ("127.0.0.1:7003".into(), "flag".into()), "a flag beats the environment");

    let work = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["--json", "--config", "kyu.toml", "work", "--print-config"];
        args.extend_from_slice(flags);
        let mut c = k.command(&args);
        for (name, v) in env {
            c.env(name, v);
        }
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    let out = work(&[], &[]);
    assert_eq!(shown(&out, "work.concurrency"), ("3".into(), "file kyu.toml".into()));
    assert_eq!(shown(&out, "work.queues").0, r#"["a","b"]"#);
    assert_eq!(shown(&out, "work.grace"), ("30s".into(), "default".into()));
    let out = work(&[("KYU_CONCURRENCY", "5"), ("KYU_QUEUES", "mail,reports")], &[]);
    assert_eq!(shown(&out, "work.concurrency"), ("5".into(), "environment (KYU_CONCURRENCY)".into()));
    assert_eq!(shown(&out, "work.queues"), (r#"["mail","reports"]"#.into(), "environment (KYU_QUEUES)".into()));
    let out = work(&[("KYU_CONCURRENCY", "5")], &["-c", "7", "--lease", "5s"]);
    assert_eq!(shown(&out, "work.concurrency"), ("7".into(), "flag".into()));
    assert_eq!(shown(&out, "work.lease"), ("5s".into(), "flag".into()));
    let out = work(&[("KYU_PREFETCH", "0")], &[]);
    assert_eq!(shown(&out, "work.prefetch"), ("0".into(), "environment (KYU_PREFETCH)".into()));
    let out = work(&[("KYU_PREFETCH", "0")], &["--prefetch", "4"]);
    assert_eq!(shown(&out, "work.prefetch"), ("4".into(), "flag".into()));

    // An unknown key names itself and the file.
    std::fs::write(k.path("bad.toml"), "listen = \"127.0.0.1:1\"\nlisen = 2\n").unwrap();
    let out = k.run(&["--config", "bad.toml", "server", "--print-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting `lisen`") && err.contains("bad.toml"), "{err}");
    let out = k.run(&["--config", "missing.toml", "queues"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

    // KYU_DATABASE_URL in a shared environment and --url on the command line
    // work together: the flag wins. Both as flags is a usage error.
    let mut c = k.command(&["--url", "http://127.0.0.1:1", "queues"]);
    c.env("KYU_DATABASE_URL", k.path("other.db"));
    let out = c.output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the kyu server"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_kyu"))
        .args(["--url", "http://127.0.0.1:1", "--database", "x.db", "queues"])
        .current_dir(k.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let k = Kyu::new();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy");
    for (from, to) in [("kyu-server.service", "kyu-server.service"), ("kyu-work@.service", "kyu-work@mail.service")] {
        let text = std::fs::read_to_string(format!("{units}/{from}")).unwrap();
        // The units name the installed binary; verify checks it exists.
        std::fs::write(k.path(to), text.replace("/usr/local/bin/kyu", env!("CARGO_BIN_EXE_kyu"))).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "./kyu-server.service", "./kyu-work@mail.service"])
        .current_dir(k.dir.path())
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_cli_behaves_in_scripts() {
    let k = Kyu::new();
    for i in 0..300 {
        k.ok(&["enqueue", "q", "k", &i.to_string()]);
    }
    // A closed pipe ends quietly.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(r#""{}" --database "{}" jobs --limit 1000 | head -n 1 >/dev/null; echo "${{PIPESTATUS:-}}""#, env!("CARGO_BIN_EXE_kyu"), k.db()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    // Commands that only read never create a database file.
    let missing = k.path("typo.db");
    for cmd in [&["jobs"][..], &["queues"], &["status", "x"], &["log", "x"], &["cancel", "x"], &["pause", "q"]] {
        let mut args = vec!["--database", missing.to_str().unwrap()];
        args.extend_from_slice(cmd);
        let out = Command::new(env!("CARGO_BIN_EXE_kyu")).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(missing.to_str().unwrap()), "the error names the path");
        assert!(!missing.exists(), "{cmd:?} created {}", missing.display());
    }
    // --verbose says which database it used.
    let out = k.run(&["--verbose", "queues"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&k.db()), "{}", String::from_utf8_lossy(&out.stderr));
    // Global options are listed apart in --help.
    let help = k.ok(&["--help"]);
    assert!(help.contains("Global options"), "{help}");
    // Queue settings, and a queue that does not exist.
    let q = k.json(&["queue", "set", "q", "--concurrency", "2", "--rate", "10/1s", "--timeout", "5m"]);
    assert_eq!((q["concurrency"].as_i64(), q["rate_limit"]["max"].as_i64(), q["timeout_ms"].as_i64()), (Some(2), Some(10), Some(300_000)));
    let q = k.json(&["queue", "set", "q", "--concurrency", "none"]);
    assert_eq!(q["concurrency"], Value::Null);
    let out = k.run(&["pause", "qq"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue named `qq`"));
    k.ok(&["pause", "qq", "--create"]);
    // Bulk redrive of the dead-letter set by filter.
    for (id, err) in [("f1", "boom: disk"), ("f2", "boom: net"), ("f3", "other")] {
        k.ok(&["enqueue", "dead", "k", "{}", "--id", id, "--max-attempts", "1"]);
        let script = format!("echo '{err}' >&2; exit 1");
        k.ok(&["work", "-q", "dead", "--max-jobs", "1", "--", "sh", "-c", &script]);
    }
    assert_eq!(k.json(&["retry", "--failed", "--queue", "dead", "--error", "boom"])["retried"], 2);
    assert_eq!(k.job("f3")["state"], "failed");
    assert_eq!(k.job("f1")["state"], "queued");
}

#[test]
fn cli_over_http_errors_and_a_large_batch_in_chunks() {
    let k = Kyu::new();
    let server = k.server("server", &["--token", "admin:admin-secret-1", "--token", "producer:producer-secret-1"]);
    // 401: said once, with what to do; --json prints the API's error shape.
    let out = k.run(&["--url", &server.url, "queues"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("KYU_TOKEN").count(), 1, "{err}");
    let out = k.run(&["--url", &server.url, "--json", "queues"]);
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // 403 names the role.
    let out = k.run(&["--url", &server.url, "--auth", "producer-secret-1", "pause", "x", "--create"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("producer"), "{}", String::from_utf8_lossy(&out.stderr));
    // 100,000 jobs from one file go in chunks under the body limit.
    let n = 100_000;
    let mut file = std::fs::File::create(k.path("jobs.jsonl")).unwrap();
    for i in 0..n {
        writeln!(file, r#"{{"queue":"bulk","kind":"k","id":"b{i}","payload":{{"i":{i}}}}}"#).unwrap();
    }
    drop(file);
    let out = k.ok(&["--url", &server.url, "--auth", "admin-secret-1", "batch", "jobs.jsonl"]);
    assert!(out.contains("100000 jobs enqueued"), "{out}");
    let mut c = k.command(&["--url", &server.url, "--json", "queues"]);
    c.env("KYU_TOKEN", "admin-secret-1");
    let q: Value = serde_json::from_slice(&c.stdout(Stdio::piped()).output().unwrap().stdout).unwrap();
    assert_eq!(q["queues"][0]["counts"]["queued"], n);
    // Sending it again stores nothing new (the ids are in the file).
    let out = k.ok(&["--url", &server.url, "--auth", "admin-secret-1", "batch", "jobs.jsonl"]);
    assert!(out.contains("0 jobs enqueued") && out.contains("100000 duplicates"), "{out}");
}
