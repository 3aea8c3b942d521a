//! Malformed configuration is refused at start, never retried: the real binary, started as a
//! platform would start it, with a URL of another ecosystem or a typo.

use std::path::Path;
use std::time::Duration;

use coupon_tests::{free_port, kafka_brokers, redis_url};

/// Runs `coupon-service consumer` with `database_url` and waits (at most 20 s) for it to end.
async fn consumer_with(database_url: &str) -> Option<std::process::Output> {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let listen = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(binary)
        .arg("consumer")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("LISTEN_ADDR", &listen)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), child).await.ok().map(Result::unwrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_url_of_another_ecosystem_is_refused_at_start_with_the_accepted_forms() {
    for url in ["jdbc:postgresql://127.0.0.1:5432/coupons", "mysql+pymysql://app:s3cret@127.0.0.1/coupons", "postgress://127.0.0.1/coupons"]
    {
        let output = consumer_with(url).await.unwrap_or_else(|| panic!("{url}: the consumer kept retrying instead of refusing"));
        assert!(!output.status.success(), "{url}: exit code {:?}", output.status.code());
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("DATABASE_URL") && said.contains("postgres://") && said.contains("sqlite:"), "{url}: {said}");
        assert!(!said.contains("s3cret"), "the password stays out of the message: {said}");
    }
}

/// The load tool against an address where nothing listens: it says so and exits non-zero
/// (it used to print a table of failures and exit 0, which a script took for a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_that_reached_nothing_says_so_and_fails() {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-tools-under-test"));
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let run = tokio::process::Command::new(binary).args(["load", "--url", &nowhere, "--event", "sale", "--requests", "20"]).output();
    let output = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the load tool ends").unwrap();
    assert!(!output.status.success(), "exit code {:?}", output.status.code());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("no request was answered") && said.contains(&nowhere), "{said}");
}

/// `AUTH_MODE` has no default: an api started without it refuses to start and says which
/// modes there are, instead of trusting whatever `userId` a request body names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_auth_mode_refuses_to_start() {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let listen = format!("127.0.0.1:{}", free_port());
    let run = tokio::process::Command::new(binary)
        .arg("api")
        .env_remove("AUTH_MODE")
        .env("REDIS_URL", redis_url())
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("LISTEN_ADDR", &listen)
        .env("OPS_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run).await.expect("refused at start, not served").unwrap();
    assert!(!output.status.success(), "exit code {:?}", output.status.code());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("AUTH_MODE is required") && said.contains("open"), "{said}");
}

/// Runs `coupon-service <command>` with `env` (besides working Redis, Kafka, SQLite and
/// listen addresses) and expects it to refuse to start: its stderr.
async fn refused_at_start(command: &str, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let run = tokio::process::Command::new(binary)
        .arg(command)
        .env_remove("RECORD_KEYS_FILE")
        .env("AUTH_MODE", "open")
        .env("REDIS_URL", redis_url())
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("DATABASE_URL", "sqlite::memory:")
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("OPS_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run).await.expect("refused at start, not served").unwrap();
    assert!(!output.status.success(), "{command}: exit code {:?}", output.status.code());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A record key file that is missing or malformed stops the api and the consumer at start,
/// saying which line is wrong, instead of running with records unsigned or unverified; so
/// do required signatures without keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_key_file_is_refused_at_start() {
    let short = std::env::temp_dir().join(format!("{}.keys", coupon_tests::unique("short")));
    std::fs::write(&short, "k1=c2hvcnQ=\n").unwrap();
    let missing = std::env::temp_dir().join(coupon_tests::unique("missing"));
    for (command, file, said) in
        [("api", &short, "key k1 has 5 bytes"), ("consumer", &short, "key k1 has 5 bytes"), ("api", &missing, "RECORD_KEYS_FILE")]
    {
        let stderr = refused_at_start(command, &[("RECORD_KEYS_FILE", file.as_os_str())]).await;
        assert!(stderr.contains(said), "{command}: {stderr}");
    }
    std::fs::remove_file(short).unwrap();
    // Required signatures without keys to verify them with.
    let stderr = refused_at_start("consumer", &[("RECORD_SIGNATURES_REQUIRED", "true".as_ref())]).await;
    assert!(stderr.contains("RECORD_SIGNATURES_REQUIRED needs RECORD_KEYS_FILE"), "{stderr}");
}

/// The load tool against an api behind TLS (an ingress terminating it): with the CA of the
/// certificate it sends the crowd and reports the answers by status; without it, it reached
/// nothing and says so, exit code non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_tool_speaks_https_and_reports_answers_by_status() {
    use coupon_tests::tls::{TestCa, TlsFront};
    let event = coupon_tests::provision_event(&kafka_brokers(), "https-load", 5, 1).await;
    let api = coupon_tests::InProcessApi::start("https-load", &kafka_brokers()).await;
    let backend_port: u16 = api.base_url.rsplit(':').next().unwrap().parse().unwrap();
    let ca = TestCa::new();
    let front = TlsFront::start(&ca, free_port(), backend_port).await;
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-tools-under-test"));
    let url = format!("https://localhost:{}", front.port);
    let load = |ca_file: Option<&Path>| {
        let mut command = tokio::process::Command::new(binary);
        command.args(["load", "--url", &url, "--event", event.id.name(), "--requests", "20", "--concurrency", "4"]);
        if let Some(ca_file) = ca_file {
            command.arg("--ca-file").arg(ca_file);
        }
        command.output()
    };
    let output = tokio::time::timeout(Duration::from_secs(60), load(Some(&ca.ca()))).await.expect("the load tool ends").unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "exit code {:?}: {table} {}", output.status.code(), String::from_utf8_lossy(&output.stderr));
    assert!(table.contains("(201) | 5 |") && table.contains("(410) | 15 |"), "{table}");

    let untrusted = tokio::time::timeout(Duration::from_secs(60), load(None)).await.expect("the load tool ends").unwrap();
    assert!(!untrusted.status.success(), "a certificate nobody vouches for was accepted");
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(said.contains("no request was answered") && said.to_lowercase().contains("certificate"), "{said}");
}

/// A JWKS URL in clear, or not a URL, or with a CA file that holds no certificate, stops
/// the api at start naming the variable, instead of fetching the keys that prove every user
/// where anyone on the path could replace them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_that_is_not_https_is_refused_at_start() {
    let jwt = |url: &'static str| [("AUTH_MODE", "jwt".as_ref()), ("JWT_JWKS_URL", url.as_ref())];
    for (url, said) in [("http://id.shop.test/jwks.json", "must be an https:// URL"), ("id.shop.test/jwks.json", "is not a URL")] {
        let stderr = refused_at_start("api", &jwt(url)).await;
        assert!(stderr.contains("JWT_JWKS_URL") && stderr.contains(said), "{url}: {stderr}");
    }
    let not_pem = std::env::temp_dir().join(format!("{}.pem", coupon_tests::unique("ca")));
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let mut env = jwt("https://id.shop.test/jwks.json").to_vec();
    env.push(("JWT_JWKS_CA_FILE", not_pem.as_os_str()));
    let stderr = refused_at_start("api", &env).await;
    assert!(stderr.contains("JWT_JWKS_CA_FILE"), "{stderr}");
    let stderr = refused_at_start(
        "api",
        &[
            ("AUTH_MODE", "jwt".as_ref()),
            ("JWT_SECRET", "s".repeat(40).as_ref()),
            ("JWT_JWKS_URL", "https://id.shop.test/jwks.json".as_ref()),
        ],
    )
    .await;
    assert!(stderr.contains("exactly one of"), "{stderr}");
}

/// The production binary carries only what runs in production: the load generator and the
/// demo are `coupon-tools`, and `coupon-service` does not know them.
#[tokio::test]
async fn the_production_binary_has_no_load_generator_or_demo() {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    for tool in ["load", "demo"] {
        let output = tokio::process::Command::new(binary).arg(tool).output().await.unwrap();
        assert_eq!(output.status.code(), Some(2), "{tool}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stderr).contains("unrecognized subcommand"), "{tool}");
    }
}
