//! Git over ssh on loopback: a real OpenSSH `sshd` of its own, serving bare repositories to
//! one client key, so the bridge's ssh path (its wrapper, batch mode, strict host key
//! checking) meets the real protocol and the real server's refusals.
//!
//! [`SshGitServer`] owns a temporary directory holding its host key, the client's key pair,
//! `authorized_keys`, the `sshd_config` and the repositories. Nothing of the machine's ssh
//! setup is read: not `/etc/ssh/sshd_config`, not its host keys, not `~/.ssh`. git reaches a
//! repository by its absolute path (`git-upload-pack '<path>'` runs in the user's shell), as on
//! a plain ssh host. Starting and stopping sshd is this module's; creating repositories is
//! shared with the HTTP server.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::create_bare_repo;

/// Where Debian's `openssh-server` installs the daemon; sshd re-executes itself for every
/// connection and so must be started by its absolute path (sshd(8)).
const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory, compiled into Debian's build. sshd refuses to start
/// without it ("Missing privilege separation directory"), and on a machine that never booted
/// the ssh service (a container, CI) nothing has created it.
const PRIVSEP_DIR: &str = "/run/sshd";
/// sshd is listening within milliseconds; this only bounds a broken start.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Another process may take the free port between our probe and sshd's bind; each attempt
/// picks a new one.
const START_ATTEMPTS: usize = 5;

/// A running sshd on 127.0.0.1 serving git repositories to the key [`Self::client_key`];
/// dropping it kills sshd and the connections it serves, then deletes its files.
#[derive(Debug)]
pub struct SshGitServer {
    sshd: Child,
    port: u16,
    user: String,
    log: Arc<Mutex<Vec<String>>>,
    // Dropped after sshd is killed (see `Drop`), so no running sshd loses its files.
    dir: TempDir,
}

/// Why an attempt to start sshd did not end with it listening.
enum StartFailure {
    /// The port was taken in the meantime; another port may do.
    PortTaken,
    /// Anything else: the log says what.
    Broken(String),
}

impl SshGitServer {
    /// Generates the keys, writes the configuration and starts sshd at a free port, returning
    /// once it listens (it says so in its log).
    ///
    /// Panics when sshd is not installed (`scripts/install-deps.sh` installs it) or does not
    /// start: the test cannot go on without it.
    pub fn start() -> SshGitServer {
        let dir = TempDir::new().expect("the temp dir is writable");
        ensure_privsep_dir();
        ssh_keygen(&dir.path().join("host_key"), "testkit-sshd-host");
        ssh_keygen(&dir.path().join("client_key"), "testkit-ssh-client");
        let public = fs::read(dir.path().join("client_key.pub")).expect("ssh-keygen wrote it");
        fs::write(dir.path().join("authorized_keys"), public).expect("the temp dir is writable");
        fs::create_dir(dir.path().join("repos")).expect("the temp dir is writable");

        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = write_config(dir.path(), port);
            match spawn_sshd(&config) {
                Ok((sshd, log)) => {
                    let user = current_user();
                    return SshGitServer {
                        sshd,
                        port,
                        user,
                        log,
                        dir,
                    };
                }
                Err(StartFailure::PortTaken) => last = format!("port {port} was taken"),
                Err(StartFailure::Broken(log)) => panic!("sshd did not start:\n{log}"),
            }
        }
        panic!("sshd found no free port in {START_ATTEMPTS} attempts; last: {last}")
    }

    /// Creates the bare repository `<name>.git` holding one commit of `files` on `main`, as
    /// [`super::GitServer::create_repo`] does, and returns its `ssh://user@127.0.0.1:port/path`
    /// URL.
    pub fn create_repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        let bare = create_bare_repo(&self.dir.path().join("repos"), name, files);
        let path = bare.to_str().expect("temp paths are UTF-8");
        format!("ssh://{}@127.0.0.1:{}{path}", self.user, self.port)
    }

    /// The private key sshd accepts, in OpenSSH's format, as an operator would store it.
    pub fn client_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("client_key")).expect("written at start")
    }

    /// A `known_hosts` line trusting this server's host key at its address and port.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(self.port, &self.dir.path().join("host_key.pub"))
    }

    /// A `known_hosts` line for this server's address and port with a host key that is not
    /// its own, as a client sees a server that was replaced or impersonated.
    pub fn impostor_known_hosts_line(&self) -> String {
        let impostor = self.dir.path().join("impostor_host_key");
        if !impostor.exists() {
            ssh_keygen(&impostor, "testkit-impostor-host");
        }
        known_hosts_line(self.port, &impostor.with_extension("pub"))
    }

    /// A freshly generated private key that sshd does not accept.
    pub fn unauthorized_key(&self) -> String {
        let key = TempDir::new().expect("the temp dir is writable");
        let path = key.path().join("key");
        ssh_keygen(&path, "testkit-unauthorized");
        fs::read_to_string(&path).expect("ssh-keygen wrote it")
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// sshd's process id, to check that nothing of it outlives the server.
    pub fn pid(&self) -> u32 {
        self.sshd.id()
    }

    /// What sshd logged so far (`LogLevel VERBOSE`: connections, accepted and refused keys).
    pub fn log(&self) -> String {
        self.log.lock().expect("not poisoned").join("\n")
    }
}

impl Drop for SshGitServer {
    /// Kills, by pid, the connections sshd still serves (each a child of it, in a session of
    /// its own that a signal to sshd does not reach), then sshd itself, and reaps it.
    fn drop(&mut self) {
        let pid = self.sshd.id();
        for child in children(pid) {
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// Creates sshd's privilege separation directory when missing (see [`PRIVSEP_DIR`]): owned
/// by root and writable by no one else, as sshd checks.
fn ensure_privsep_dir() {
    use std::os::unix::fs::PermissionsExt as _;
    if Path::new(PRIVSEP_DIR).is_dir() {
        return;
    }
    if let Err(error) = fs::create_dir_all(PRIVSEP_DIR) {
        panic!("failed to create sshd's {PRIVSEP_DIR} (tests with sshd run as root): {error}");
    }
    fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755))
        .expect("chmod the directory just created");
}

/// Writes a new ed25519 key pair without a passphrase at `path` and `path.pub`.
fn ssh_keygen(path: &Path, comment: &str) {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen is installed (scripts/install-deps.sh installs openssh-client)");
    assert!(
        output.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `[127.0.0.1]:port <type> <key>`: ssh names a host at a port other than 22 in brackets.
fn known_hosts_line(port: u16, public_key: &Path) -> String {
    let key = fs::read_to_string(public_key).expect("ssh-keygen wrote it");
    let mut fields = key.split_whitespace();
    let (kind, blob) = (fields.next(), fields.next());
    let (Some(kind), Some(blob)) = (kind, blob) else {
        panic!("not an OpenSSH public key: {key}");
    };
    format!("[127.0.0.1]:{port} {kind} {blob}")
}

/// A port that was free a moment ago; [`SshGitServer::start`] tries another if it is taken.
fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    probe.local_addr().expect("bound").port()
}

/// The account git logs in as: whoever runs the tests (root on CI and the development
/// machines, hence `PermitRootLogin`).
fn current_user() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| panic!("uid {uid} has no account for sshd to log in"))
}

/// Writes `sshd_config` for `port` and returns its path. Every file sshd reads is named here,
/// so nothing of the machine's ssh setup applies.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let d = dir.display();
    let config = format!(
        "ListenAddress 127.0.0.1:{port}\n\
         HostKey {d}/host_key\n\
         PidFile none\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         # The temp dir's parents include /tmp, which is world-writable: StrictModes would\n\
         # refuse authorized_keys beneath it.\n\
         StrictModes no\n\
         PermitUserRC no\n\
         PermitTTY no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         # git sends it to ask for protocol v2, as real hosts accept.\n\
         AcceptEnv GIT_PROTOCOL\n\
         LogLevel VERBOSE\n"
    );
    let path = dir.join("sshd_config");
    fs::write(&path, config).expect("the temp dir is writable");
    path
}

/// sshd's log lines, filled by a thread as sshd writes them.
type SharedLog = Arc<Mutex<Vec<String>>>;

/// Starts sshd in the foreground with its log on stderr, and waits until it says it listens
/// or exits.
fn spawn_sshd(config: &Path) -> Result<(Child, SharedLog), StartFailure> {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: scripts/install-deps.sh installs Debian's openssh-server"
    );
    let mut sshd = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sshd starts");
    let stderr = sshd.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready) = mpsc::channel();
    drain_log(stderr, Arc::clone(&log), ready_tx);

    match ready.recv_timeout(START_DEADLINE) {
        Ok(()) => return Ok((sshd, log)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = sshd.kill();
        }
        // The log ended: sshd exited.
        Err(mpsc::RecvTimeoutError::Disconnected) => {}
    }
    let _ = sshd.wait();
    let text = log.lock().expect("not poisoned").join("\n");
    if text.contains("Address already in use") {
        return Err(StartFailure::PortTaken);
    }
    Err(StartFailure::Broken(text))
}

/// Reads sshd's log into `log` for as long as sshd writes it, so sshd never blocks on a full
/// pipe; signals `ready` at "Server listening", and drops it at the end of the log.
fn drain_log(stderr: ChildStderr, log: Arc<Mutex<Vec<String>>>, ready: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut ready = Some(ready);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Server listening on")
                && let Some(ready) = ready.take()
            {
                let _ = ready.send(());
            }
            log.lock().expect("not poisoned").push(line);
        }
    });
}

/// The pids of `pid`'s children (proc(5), `/proc/<pid>/task/<tid>/children`).
fn children(pid: u32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}
