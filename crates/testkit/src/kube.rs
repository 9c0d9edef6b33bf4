//! A real Kubernetes control plane on loopback: Debian's etcd, and kube-apiserver and
//! kube-controller-manager v1.20 built from Debian's source package by
//! `scripts/install-kube-apiserver.sh` (no registry ships them).
//!
//! [`KubeCluster::start`] makes a temporary directory with a CA of its own (openssl), the API
//! server's certificate for 127.0.0.1, a ServiceAccount signing key and a static token file,
//! then starts etcd, the API server (TLS, RBAC on, 127.0.0.1 only, ports the kernel picked)
//! and the controller manager with only the controllers the tests need (the Job controller,
//! which makes a Job's Pod and follows its phase, and the garbage collector, which deletes
//! what a deleted object owned). There is no scheduler and no kubelet: a test plays the
//! kubelet's part by patching a Pod's status. Dropping the cluster stops the three processes
//! and deletes the directory; nothing is left running.
//!
//! The tokens: [`KubeCluster::admin_token`] belongs to `system:masters`;
//! [`KubeCluster::service_account_token_file`] holds one that authenticates as the
//! ServiceAccount `headless-bridge` in the namespace `headless-bridge`, whatever RBAC grants
//! it, exactly as that ServiceAccount's own token would.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The version `scripts/install-kube-apiserver.sh` builds.
pub const VERSION: &str = "1.20.2";
/// The namespace and name of the ServiceAccount whose token the cluster hands out.
pub const SA_NAMESPACE: &str = "headless-bridge";
pub const SA_NAME: &str = "headless-bridge";
/// Startup takes about 4 s on 2 idle cores; this bounds a broken one on a loaded machine.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// How often readiness is asked while the API server starts (it has no other signal).
const READY_POLL: Duration = Duration::from_millis(100);

/// A running etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.
pub struct KubeCluster {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA the API server's certificate chains to (PEM).
    pub ca_file: PathBuf,
    admin_token: String,
    processes: Vec<(&'static str, Child)>,
    dir: TempDir,
}

/// Where the API server binaries are: `HB_KUBE_BIN_DIR`, else the install script's cache.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HB_KUBE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("HB_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/tmp"));
            base.join("headless-bridge").join(format!("kube-{VERSION}"))
        });
    cache.join("bin")
}

/// Whether this machine can run a cluster: the two binaries built and etcd installed.
pub fn available() -> bool {
    let bin = bin_dir();
    bin.join("kube-apiserver").is_file()
        && bin.join("kube-controller-manager").is_file()
        && etcd_path().is_some()
}

fn etcd_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

impl KubeCluster {
    /// Starts the control plane and returns once the API server answers `/readyz`.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hb-kube-")
            .tempdir()
            .expect("a temp dir");
        let admin_token = random_hex();
        let sa_token = random_hex();
        make_pki(dir.path());
        let tokens = format!(
            "{admin_token},admin,admin,\"system:masters\"\n\
             {sa_token},system:serviceaccount:{SA_NAMESPACE}:{SA_NAME},sa-uid,\"system:serviceaccounts,system:serviceaccounts:{SA_NAMESPACE}\"\n"
        );
        write_private(&dir.path().join("tokens.csv"), &tokens);
        write_private(&dir.path().join("sa-token"), &sa_token);
        write_private(&dir.path().join("admin-token"), &admin_token);

        let [etcd_client, etcd_peer, api_port] = free_ports();
        let url = format!("https://127.0.0.1:{api_port}");
        let mut cluster = Self {
            url: url.clone(),
            ca_file: dir.path().join("ca.crt"),
            admin_token,
            processes: Vec::new(),
            dir,
        };
        let d = cluster.dir.path().to_owned();
        let mut etcd = Command::new(etcd_path().expect("etcd is installed"));
        etcd.args(["--name", "default", "--data-dir"])
            .arg(d.join("etcd"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{etcd_peer}"
            ))
            .args(["--log-level", "warn"]);
        cluster.spawn("etcd", etcd);

        let bin = bin_dir();
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            // 1.20 still opens an unauthenticated port (8080) unless told not to.
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--tls-cert-file={}",
                d.join("server.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                d.join("server.key").display()
            ))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                d.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=false")
            .arg("--profiling=false")
            .arg("--v=0");
        cluster.spawn("kube-apiserver", apiserver);
        cluster.wait_ready().await;

        let kubeconfig = cluster.kubeconfig(&cluster.admin_token.clone());
        let mut manager = Command::new(bin.join("kube-controller-manager"));
        manager
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--controllers=job,garbagecollector")
            .arg("--leader-elect=false")
            .arg("--port=0")
            .arg("--secure-port=0")
            .arg("--use-service-account-credentials=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                d.join("sa.key").display()
            ))
            .arg("--profiling=false");
        cluster.spawn("kube-controller-manager", manager);
        cluster
    }

    /// A bearer token of a cluster administrator (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A file holding the administrator's token.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.path().join("admin-token")
    }

    /// A file holding the token of the ServiceAccount `headless-bridge/headless-bridge`.
    pub fn service_account_token_file(&self) -> PathBuf {
        self.dir.path().join("sa-token")
    }

    /// A kubeconfig (for kubectl) that authenticates with `token`.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", &random_hex()[..8]));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n\
             current-context: test\n",
            self.url,
            self.ca_file.display()
        );
        write_private(&path, &text);
        path
    }

    fn spawn(&mut self, name: &'static str, mut command: Command) {
        let log =
            fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {name}: {e}"));
        self.processes.push((name, child));
    }

    /// The last lines of a process's log, for a failure message.
    pub fn log_tail(&self, name: &str) -> String {
        let text =
            fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self) {
        let ca = fs::read(&self.ca_file).expect("read the CA");
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("a PEM CA")])
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let started = Instant::now();
        loop {
            let exited = self
                .processes
                .iter_mut()
                .find_map(|(name, child)| Some((*name, child.try_wait().ok()??)));
            if let Some((name, status)) = exited {
                panic!("{name} exited with {status}:\n{}", self.log_tail(name));
            }
            let ready = client
                .get(format!("{}/readyz", self.url))
                .bearer_auth(&self.admin_token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "kube-apiserver not ready after {READY_DEADLINE:?}:\n{}",
                self.log_tail("kube-apiserver")
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // The controller manager first, etcd last, so no process logs a lost peer for long.
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        for (_, child) in self.processes.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// A CA, the API server's certificate for 127.0.0.1 signed by it, and a ServiceAccount
/// signing key, made with the openssl CLI.
fn make_pki(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=headless-bridge-test-ca",
    ]);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the extensions");
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    openssl(&["genrsa", "-out", "sa.key", "2048"]);
}

/// Three ports free at the time of asking (held together so they differ).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

fn random_hex() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    hex::encode(bytes)
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).expect("write a cluster file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod a cluster file");
}
