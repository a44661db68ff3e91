//! A smoke run of `chat-bench` (tiny sizes, seconds) against a real `chat-server` process and
//! PostgreSQL, so the tool cannot rot. It asserts what each scenario did, never how fast.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// `chat-server` of this profile, built if this test runs before anything built it.
fn server_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_chat-bench"));
    let bin = bench.with_file_name("chat-server");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "--workspace", "--bins"]);
        if bench.parent().and_then(|p| p.file_name()) == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building chat-server failed");
    }
    assert!(bin.is_file(), "no chat-server at {}", bin.display());
    bin
}

/// `chat-bench --smoke` with `args`, against this profile's `chat-server`, its server log in
/// the temporary folder under `log_name`.
fn run_smoke(log_name: &str, args: &[&OsStr]) -> Output {
    let log = format!("chat-bench-{log_name}-{}.log", std::process::id());
    Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .arg("--smoke")
        .args(args)
        .arg("--server-log")
        .arg(std::env::temp_dir().join(log))
        .arg("--server-bin")
        .arg(server_bin())
        .output()
        .expect("running chat-bench")
}

#[test]
fn smoke_run_of_every_scenario() {
    let output = run_smoke(
        "smoke",
        &[
            "--scenarios".as_ref(),
            "idle,streams,rest,history,login,retrieval,model,cleanup".as_ref(),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chat-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let find = |name: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["scenario"] == name)
            .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
    };
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{stdout}");

    let idle = find("idle_sockets");
    assert_eq!(idle["opened"], 20, "{idle}");
    assert!(
        idle["server_rss_held_mib"].as_f64().unwrap() > 0.0,
        "{idle}"
    );

    let streams = find("streams");
    assert_eq!(streams["answered"], 10, "{streams}");
    // Every chunk the fake stamped came back in a delta: 10 answers × 5 chunks.
    assert_eq!(streams["chunk_samples"], 50, "{streams}");
    assert!(streams["chunk_added_p50_ms"].as_f64().unwrap() >= 0.0);
    // Every question reached the fake's embeddings; none took more than one request.
    let (requests, texts) = (
        streams["embedding_requests"].as_u64().unwrap(),
        streams["embedded_texts"].as_u64().unwrap(),
    );
    assert!(texts >= 10 && (1..=texts).contains(&requests), "{streams}");
    // The rest of the machine beside the server.
    for field in ["bench_cpu_s", "postgres_cpu_s", "machine_busy_cores"] {
        assert!(
            streams[field].as_f64().unwrap() >= 0.0,
            "{field}: {streams}"
        );
    }

    let rest = find("rest_chat");
    assert_eq!(rest["requests"], 10, "{rest}");
    assert!(rest["server_cpu_s"].as_f64().unwrap() > 0.0, "{rest}");

    let cleanup = find("cleanup");
    assert_eq!(cleanup["messages_seeded"], 400, "{cleanup}");
    assert!(
        cleanup["messages_deleted"].as_i64().unwrap() >= 400,
        "{cleanup}"
    );
    assert!(
        cleanup["chat_baseline"]["requests"].as_u64().unwrap() > 0,
        "{cleanup}"
    );

    let history = find("history");
    assert_eq!(history["messages"], 200, "{history}");
    assert_eq!(history["requests"], 20, "{history}");

    let login = find("login_burst");
    assert_eq!(
        login["logins"].as_u64().unwrap() + login["refused_503"].as_u64().unwrap(),
        4,
        "{login}"
    );

    let retrieval = find("retrieval");
    assert_eq!(retrieval["chunks"], 1000);
    let recall = retrieval["recall_at_10"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&recall), "{retrieval}");

    // The local model in-process: 4 texts one per pass, then two per pass.
    let model: Vec<&Value> = lines.iter().filter(|l| l["scenario"] == "model").collect();
    assert_eq!(model.len(), 2, "{stdout}");
    for (line, batch, passes) in [(model[0], 1, 4), (model[1], 2, 2)] {
        assert_eq!(line["batch"], batch, "{line}");
        assert_eq!(line["texts"], 4, "{line}");
        assert_eq!(line["passes"], passes, "{line}");
        assert!(line["cpu_ms_per_text"].as_f64().unwrap() > 0.0, "{line}");
    }
}

/// A server that cannot start (its knowledge base is missing) fails the run with the reason,
/// and the database the bench created for it is gone.
#[test]
fn a_server_that_cannot_start_leaves_no_database_behind() {
    let missing = std::env::temp_dir().join(format!("no-kb-{}", std::process::id()));
    let output = run_smoke(
        "nokb",
        &[
            "--scenarios".as_ref(),
            "idle".as_ref(),
            "--kb-dir".as_ref(),
            missing.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("exited during start"), "{stderr}");
    let name = stderr
        .split_whitespace()
        .find(|w| w.starts_with("chat_bench_"))
        .unwrap_or_else(|| panic!("no database named in: {stderr}"));

    let url = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exists: bool = runtime.block_on(async {
        let admin = server::db::connect(&url).await.expect("PostgreSQL");
        admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&name],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert!(!exists, "{name} was left behind");
}
