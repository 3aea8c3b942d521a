//! TLS test bed: a throw-away CA made per test, and the servers the tests reach over TLS,
//! started from the machine's own binaries: Redis with `--tls-port`, a PostgreSQL cluster
//! with `ssl=on` that refuses plain connections, and a TLS front (socat) for a tansu broker,
//! since tansu 0.6 accepts `--cert`/`--key` but does not serve TLS yet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::{free_port, unique, wait_until, ChildProcess};

/// A CA and the PEM files it signed, in a fresh directory: `ca.crt`, `server.crt`/`.key`
/// (for `localhost` and `127.0.0.1`), `client.crt`/`.key`.
pub struct TestCa {
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("test-ca"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, format!("coupon test CA {}", unique("ca")));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaves = [
            ("server.crt", "server.key", ExtendedKeyUsagePurpose::ServerAuth, "localhost"),
            ("client.crt", "client.key", ExtendedKeyUsagePurpose::ClientAuth, "coupon-client"),
        ];
        for (cert_file, key_file, purpose, cn) in leaves {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![purpose];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(cert_file), cert.pem()).unwrap();
            write_private(&dir.join(key_file), &key.serialize_pem());
        }
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn wait_listening(what: &str, port: u16, timeout: Duration) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(what, timeout, || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }).await;
}

/// A Redis that speaks only TLS and requires a client certificate signed by `ca`.
pub struct TlsRedis {
    pub port: u16,
    _process: ChildProcess,
}

impl TlsRedis {
    pub async fn start(ca: &TestCa) -> Self {
        let port = free_port();
        let (port_text, dir) = (port.to_string(), std::env::temp_dir().join(unique("tls-redis")));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, ca_file) = (ca.file("server.crt"), ca.file("server.key"), ca.ca());
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca_file.to_str().unwrap(),
            "--tls-auth-clients",
            "yes",
        ];
        let process = ChildProcess::spawn(Path::new("redis-server"), &args, &[]);
        wait_listening("TLS Redis listening", port, Duration::from_secs(20)).await;
        Self { port, _process: process }
    }

    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

/// A PostgreSQL cluster of its own with `ssl=on` and only `hostssl` entries: a plain
/// connection is refused, so a connection that works is encrypted.
pub struct TlsPostgres {
    pub port: u16,
    data: PathBuf,
    user: Option<&'static str>,
}

impl TlsPostgres {
    /// The server binaries of the machine's PostgreSQL (`/usr/lib/postgresql/<v>/bin`).
    fn bin(name: &str) -> PathBuf {
        let mut versions: Vec<PathBuf> =
            std::fs::read_dir("/usr/lib/postgresql").map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
        versions.sort();
        versions.last().map(|v| v.join("bin").join(name)).filter(|p| p.exists()).unwrap_or_else(|| name.into())
    }

    /// `initdb` and `pg_ctl start` as the `postgres` user when running as root (PostgreSQL
    /// refuses to run as root), else as the current user.
    pub async fn start(ca: &TestCa) -> Self {
        let root = std::env::temp_dir().join(unique("tls-postgres"));
        let data = root.join("data");
        std::fs::create_dir_all(&root).unwrap();
        let user = is_root().then_some("postgres");
        for (name, target) in [("server.crt", "server.crt"), ("server.key", "server.key"), ("ca.crt", "ca.crt")] {
            std::fs::copy(ca.file(name), root.join(target)).unwrap();
        }
        if let Some(user) = user {
            run("chown", &["-R", &format!("{user}:{user}"), root.to_str().unwrap()], None);
        }
        run(Self::bin("initdb").to_str().unwrap(), &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"], user);
        let hba = "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\nhostnossl all all all reject\n";
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\nfsync = off\n",
            root.display(),
            root.join("server.crt").display(),
            root.join("server.key").display(),
            root.join("ca.crt").display()
        );
        std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
        if let Some(user) = user {
            run("chown", &["-R", &format!("{user}:{user}"), root.to_str().unwrap()], None);
        }
        let log = root.join("server.log");
        run(
            Self::bin("pg_ctl").to_str().unwrap(),
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
            user,
        );
        wait_listening("TLS PostgreSQL listening", port, Duration::from_secs(30)).await;
        Self { port, data, user }
    }

    /// The URL with `sslmode` and the CA as the driver defines them.
    pub fn url(&self, sslmode: &str, ca_file: &Path) -> String {
        format!("postgres://postgres@localhost:{}/postgres?sslmode={sslmode}&sslrootcert={}", self.port, ca_file.display())
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new_as(self.user, Self::bin("pg_ctl").to_str().unwrap())
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command as `user` (through `runuser`) or as ourselves.
trait CommandAs {
    fn new_as(user: Option<&str>, program: &str) -> std::process::Command;
}

impl CommandAs for std::process::Command {
    fn new_as(user: Option<&str>, program: &str) -> std::process::Command {
        match user {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", user, "--", program]);
                command
            }
            None => std::process::Command::new(program),
        }
    }
}

fn run(program: &str, args: &[&str], user: Option<&str>) {
    let output = std::process::Command::new_as(user, program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Serves `app` over TLS (the server certificate of `ca`) on a port of loopback the system
/// picks, in this process, and returns the port: nothing can take the port between the
/// choice and the bind, as with a `free_port` handed to another process.
pub async fn serve_https(ca: &TestCa, app: axum::Router) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(ca.file("server.crt")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(ca.file("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    port
}

/// A TLS listener on `localhost` in front of a plain TCP port (`socat`), with the server
/// certificate of `ca`.
pub struct TlsFront {
    pub port: u16,
    _process: ChildProcess,
}

impl TlsFront {
    pub async fn start(ca: &TestCa, port: u16, backend_port: u16) -> Self {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            ca.file("server.crt").display(),
            ca.file("server.key").display()
        );
        let process = ChildProcess::spawn(Path::new("socat"), &[&listen, &format!("TCP:127.0.0.1:{backend_port}")], &[]);
        wait_listening("TLS front listening", port, Duration::from_secs(20)).await;
        Self { port, _process: process }
    }
}
