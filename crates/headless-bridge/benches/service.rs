//! The service benchmark: what the bridge costs per run, side by side with baselines measured
//! in the same run. Run it with `scripts/bench.sh` (or `cargo bench --bench service`); it
//! prints a table and never fails on a number, since timing depends on the machine.
//!
//! Baselines: the same trivial CLI spawned directly in a loop (the floor), and through
//! Debian's `webhook` (a Go server that runs a command per request) when it is installed.
//!
//! `cargo bench --bench service -- codex` measures only the Codex turn, `-- service` only the
//! rest; with neither, both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::model::{Behavior, FakeModel};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "bench-token-0123456789abcdef";
const MODEL_KEY: &str = "sk-bench-0123456789abcdef";
/// Codex turns measured each way.
const CODEX_TURNS: usize = 30;

#[tokio::main]
async fn main() {
    let work = tempfile::tempdir().expect("a temp dir");
    let profiles = write_profiles(work.path());
    let model = FakeModel::start(Behavior::Reply("benchmark answer".into()), MODEL_KEY).await;
    let codex_dir = work.path().join("codex");
    model.write_codex_home(&codex_dir).expect("write the login");
    let bridge = Bridge::start(work.path(), &profiles, &codex_dir).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("a client");
    let mut table = Table::default();

    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if wanted("service") {
        service(&mut table, &client, &bridge, work.path()).await;
    }
    if wanted("codex") {
        codex_turn(&mut table, &client, &bridge, work.path(), &codex_dir).await;
    }
    table.print();
    drop(bridge);
}

/// The trivial CLI against its baselines, the bridge under load, memory and output.
async fn service(table: &mut Table, client: &reqwest::Client, bridge: &Bridge, work: &Path) {
    table.row(
        "bridge resident memory, idle",
        format!("{} MiB", mib(bridge.rss_kib())),
        "target < 15 MiB",
    );
    let direct_1 = spawn_loop(300, 1).await;
    let (direct_64, direct_cpu) = Cpu::during(std::process::id(), spawn_loop(2000, 64)).await;
    let bridge_1 = load(client, 300, 1, || bridge.run_request("trivial")).await;
    let (bridge_64, bridge_cpu) = Cpu::during(
        bridge.pid(),
        load(client, 2000, 64, || bridge.run_request("trivial")),
    )
    .await;
    let webhook = Webhook::start(work).await;
    let (webhook_1, webhook_64) = match &webhook {
        Some(hook) => (
            Some(load(client, 300, 1, || hook.request(client)).await),
            Some(Cpu::during(hook.pid(), load(client, 2000, 64, || hook.request(client))).await),
        ),
        None => (None, None),
    };
    let (webhook_64, webhook_cpu) = webhook_64.unzip();
    table.section("trivial CLI (/bin/echo): runs/s, p50, p99");
    table.row(
        "spawned directly, concurrency 1",
        direct_1.summary(),
        "floor",
    );
    table.row(
        "spawned directly, concurrency 64",
        direct_64.summary(),
        "floor",
    );
    table.row(
        "through webhook, concurrency 1",
        webhook_1
            .as_ref()
            .map_or("webhook not installed".into(), Stats::summary),
        "baseline",
    );
    table.row(
        "through webhook, concurrency 64",
        webhook_64
            .as_ref()
            .map_or("webhook not installed".into(), Stats::summary),
        "baseline",
    );
    table.row("through the bridge, concurrency 1", bridge_1.summary(), "");
    let ratio = webhook_64.as_ref().map_or("n/a".into(), |w| {
        format!("{:.2}x webhook", bridge_64.rate() / w.rate())
    });
    table.row(
        "through the bridge, concurrency 64",
        bridge_64.summary(),
        &format!("{ratio}; target >= 1.5x"),
    );
    table.row(
        "runs lost at concurrency 64",
        bridge_64.failures.to_string(),
        "target 0",
    );

    // What bounds the rates above: CPU time per run, on a machine whose cores are all busy.
    table.section("trivial CLI at concurrency 64: CPU per run, own + reaped children");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let ceiling = |cpu: &Cpu| format!("at most {:.0}/s on {cores} cores", cpu.ceiling(cores, 2000));
    table.row(
        "spawned directly (the benchmark, /bin/echo)",
        direct_cpu.per_run(2000),
        &ceiling(&direct_cpu),
    );
    table.row(
        "through webhook (webhook, /bin/echo)",
        webhook_cpu
            .as_ref()
            .map_or("webhook not installed".into(), |cpu| cpu.per_run(2000)),
        &webhook_cpu.as_ref().map_or(String::new(), ceiling),
    );
    table.row(
        "through the bridge (bridge, shim, /bin/echo)",
        bridge_cpu.per_run(2000),
        &ceiling(&bridge_cpu),
    );

    table.section("under load");
    let (health, during) = health_under_load(client, bridge).await;
    table.row(
        "/health p50 / p99 while 64 runs go",
        format!("{:.2} ms / {:.2} ms", ms(health.p(50)), ms(health.p(99))),
        "target p99 < 5 ms",
    );
    table.row(
        "bridge resident memory under load (peak)",
        format!("{} MiB", mib(during)),
        "",
    );
    let sleepers = sleepers(client, bridge).await;
    table.row(
        "50 concurrent runs of `sleep 1`, all done in",
        format!("{:.3} s", sleepers.as_secs_f64()),
        "target <= 1.25 s",
    );
    let (plain, through, peak) = flood(client, bridge).await;
    let (plain_mbs, through_mbs) = (1024.0 / plain.as_secs_f64(), 1024.0 / through.as_secs_f64());
    table.row(
        "1 GiB of output into `cat > /dev/null`",
        format!("{plain_mbs:.0} MiB/s"),
        "baseline",
    );
    table.row(
        "1 GiB of output through the bridge",
        format!(
            "{through_mbs:.0} MiB/s ({:.0}%)",
            100.0 * through_mbs / plain_mbs
        ),
        "target >= 50%",
    );
    table.row(
        "bridge resident memory after the flood (peak)",
        format!("{} MiB", mib(peak)),
        "target < 64 MiB",
    );

    drop(webhook);
}

/// One Codex turn through the bridge against `codex exec` run directly.
async fn codex_turn(
    table: &mut Table,
    client: &reqwest::Client,
    bridge: &Bridge,
    work: &Path,
    codex_dir: &Path,
) {
    table.section(&format!(
        "one Codex turn (fake model on loopback), median of {CODEX_TURNS}, the three in turn"
    ));
    // A bridge's first Codex run sets the login's home template going; later runs start
    // from it. The first is measured alone, the steady state below.
    let first_codex = load(client, 1, 1, || bridge.run_request("codex")).await;
    assert_eq!(first_codex.failures, 0, "the first Codex run succeeds");
    bridge.until_home_template_ready().await;
    let direct = DirectCodex::new(codex_dir, work);
    // The reused home's own first start is not one a person pays at every turn.
    assert!(
        direct.turn(&direct.reused).await,
        "a direct Codex turn succeeds"
    );
    // Taken in turn, so that the machine drifting affects the three alike. The bridge's turn
    // follows the reused home's at once, so that each pair sees the same machine; what the
    // bridge does after a run (removing its workspace, copying a home ahead) falls on the
    // new-home turn that comes next, not on the baseline.
    let (mut reused, mut fresh, mut through) = Default::default();
    for n in 0..CODEX_TURNS {
        timed(&mut fresh, direct.turn(&direct.new_home(n))).await;
        timed(&mut reused, direct.turn(&direct.reused)).await;
        timed(&mut through, bridge.run_request("codex")).await;
    }
    let [reused, fresh, through]: [Stats; 3] = [reused, fresh, through];
    for stats in [&reused, &fresh, &through] {
        assert_eq!(stats.failures, 0, "every Codex turn succeeds");
    }
    table.row(
        "`codex exec --json` directly, one CODEX_HOME",
        format!("{:.1} ms", ms(reused.p(50))),
        "baseline",
    );
    table.row(
        "`codex exec --json` directly, a new CODEX_HOME each",
        format!("{:.1} ms", ms(fresh.p(50))),
        "what a private home costs Codex",
    );
    table.row(
        "the bridge's first Codex run (no home template yet)",
        format!("{:.1} ms", ms(first_codex.p(50))),
        "",
    );
    let added = ms(through.p(50)) - ms(reused.p(50));
    let added_fresh = ms(through.p(50)) - ms(fresh.p(50));
    table.row(
        "through the bridge",
        format!(
            "{:.1} ms ({added:+.1} ms; {added_fresh:+.1} ms against a new home)",
            ms(through.p(50))
        ),
        "target <= +20 ms",
    );
    table.row(
        "added by the bridge, turn by turn",
        format!(
            "{:+.1} ms median, {:+.1} to {:+.1} ms middle half",
            paired_difference(&through, &reused, 50),
            paired_difference(&through, &reused, 25),
            paired_difference(&through, &reused, 75)
        ),
        "each bridge turn less the reused-home turn just before it",
    );
}

/// A percentile of `a`'s latencies less `b`'s, pair by pair in the order they were taken: less
/// moved by the machine drifting over the whole run than a difference of two medians.
fn paired_difference(a: &Stats, b: &Stats, percentile: usize) -> f64 {
    let mut differences: Vec<f64> = a
        .latencies
        .iter()
        .zip(&b.latencies)
        .map(|(a, b)| ms(*a) - ms(*b))
        .collect();
    differences.sort_by(f64::total_cmp);
    let index = (differences.len().saturating_sub(1) * percentile) / 100;
    differences.get(index).copied().unwrap_or_default()
}

/// Latencies of a batch of requests.
#[derive(Debug, Default)]
struct Stats {
    latencies: Vec<Duration>,
    wall: Duration,
    failures: usize,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn p(&self, percentile: usize) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = (sorted.len().saturating_sub(1) * percentile) / 100;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn summary(&self) -> String {
        format!(
            "{:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
            self.rate(),
            ms(self.p(50)),
            ms(self.p(99))
        )
    }
}

/// Runs `total` requests made by `make`, `concurrency` at a time.
async fn load<F, Fut>(_client: &reqwest::Client, total: usize, concurrency: usize, make: F) -> Stats
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use futures::StreamExt as _;
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(0..total)
        .map(|_| {
            let request = make();
            async move {
                let t = Instant::now();
                let ok = request.await;
                (t.elapsed(), ok)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Stats {
        wall: started.elapsed(),
        failures: results.iter().filter(|(_, ok)| !ok).count(),
        latencies: results.into_iter().map(|(d, _)| d).collect(),
    }
}

async fn spawn_loop(total: usize, concurrency: usize) -> Stats {
    let client = reqwest::Client::new();
    load(&client, total, concurrency, || async {
        Command::new("/bin/echo")
            .arg("hi")
            .stdout(Stdio::piped())
            .output()
            .await
            .is_ok_and(|o| o.status.success())
    })
    .await
}

struct Bridge {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl Bridge {
    async fn start(work: &Path, profiles: &Path, codex_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_headless-bridge"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HB_LISTEN", "127.0.0.1:0")
            .env("HB_API_TOKEN", TOKEN)
            .env("HB_DATA_DIR", work.join("data"))
            .env("HB_ADAPTERS_DIR", profiles)
            .env("HB_CODEX_DIR", codex_dir)
            .env("HB_CODEX_BIN", codex_bin())
            .env("HB_MAX_CONCURRENT_RUNS", "64")
            .env("HB_MAX_QUEUED_RUNS", "4096")
            .env("HB_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the bridge starts");
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .expect("a client");
        // The serving line is at info, below RUST_LOG=warn, so find the port in /proc instead.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = wait_for_listen(child.id().expect("running")).await;
        Self { child, url, client }
    }

    fn run_request(
        &self,
        adapter: &'static str,
    ) -> impl std::future::Future<Output = bool> + use<> {
        let request = self
            .client
            .post(format!("{}/v1/runs?wait=120", self.url))
            .bearer_auth(TOKEN)
            .json(&json!({"adapter": adapter, "prompt": "hi"}));
        async move {
            let Ok(response) = request.send().await else {
                return false;
            };
            let Ok(run) = response.json::<Value>().await else {
                return false;
            };
            run["outcome"] == "succeeded"
        }
    }

    /// Waits until the deep health check says the Codex home template is ready.
    async fn until_home_template_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let health: Option<Value> = match self
                .client
                .get(format!("{}/health?deep=1", self.url))
                .send()
                .await
            {
                Ok(response) => response.json().await.ok(),
                Err(_) => None,
            };
            let state = health
                .as_ref()
                .map(|h| h["adapters"]["codex"]["credentials"]["home_template"]["state"].clone());
            if state == Some(json!("ready")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the Codex home template was not ready within 60 s");
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    fn peak_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }
}

/// The bridge's listening address, found in /proc/net/tcp by its socket inode.
async fn wait_for_listen(pid: u32) -> String {
    for _ in 0..500 {
        if let Some(port) = listening_port(pid) {
            return format!("http://127.0.0.1:{port}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the bridge did not start listening");
}

fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A");
        let ours = fields
            .get(9)
            .is_some_and(|inode| inodes.iter().any(|i| i == inode));
        if !(listening && ours) {
            return None;
        }
        u16::from_str_radix(fields.get(1)?.split(':').nth(1)?, 16).ok()
    })
}

/// CPU time a process used while some work went on: its own, and its children's once it had
/// reaped them (which includes what they reaped in turn).
struct Cpu {
    own: Duration,
    children: Duration,
}

impl Cpu {
    async fn during<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (T, Self) {
        let before = proc_cpu(pid);
        let value = work.await;
        let after = proc_cpu(pid);
        let cpu = Self {
            own: after.0.saturating_sub(before.0),
            children: after.1.saturating_sub(before.1),
        };
        (value, cpu)
    }

    fn per_run(&self, runs: usize) -> String {
        let per = |d: Duration| ms(d) / runs as f64;
        format!(
            "{:.2} ms ({:.2} own + {:.2} children)",
            per(self.own + self.children),
            per(self.own),
            per(self.children)
        )
    }

    /// Runs a second `cores` could do at this cost, with nothing else to run.
    fn ceiling(&self, cores: usize, runs: usize) -> f64 {
        cores as f64 * runs as f64 / (self.own + self.children).as_secs_f64()
    }
}

/// utime + stime and cutime + cstime of /proc/PID/stat.
fn proc_cpu(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold anything.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = |from: usize| {
        fields
            .get(from..from + 2)
            .map_or(0, |f| f.iter().sum::<u64>())
    };
    let tick = Duration::from_secs(1) / rustix::param::clock_ticks_per_second() as u32;
    // utime is the 14th field of the line, the 12th after the name.
    (tick * ticks(11) as u32, tick * ticks(13) as u32)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn health_under_load(client: &reqwest::Client, bridge: &Bridge) -> (Stats, u64) {
    let runs: Vec<_> = (0..64)
        .map(|_| tokio::spawn(bridge.run_request("sleep1")))
        .collect();
    let url = format!("{}/health", bridge.url);
    let mut stats = Stats::default();
    let started = Instant::now();
    while stats.latencies.len() < 2000 && started.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        let ok = client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        stats.latencies.push(t.elapsed());
        stats.failures += usize::from(!ok);
    }
    stats.wall = started.elapsed();
    let peak = bridge.peak_kib();
    for run in runs {
        let _ = run.await;
    }
    (stats, peak)
}

async fn sleepers(client: &reqwest::Client, bridge: &Bridge) -> Duration {
    let stats = load(client, 50, 50, || bridge.run_request("sleep1")).await;
    assert_eq!(stats.failures, 0, "every sleeper run succeeds");
    stats.wall
}

async fn flood(client: &reqwest::Client, bridge: &Bridge) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let status = Command::new("/bin/sh")
        .args(["-c", &format!("{FLOOD} | cat > /dev/null")])
        .status()
        .await;
    assert!(status.is_ok_and(|s| s.success()), "the plain flood runs");
    let plain = started.elapsed();
    let through = load(client, 1, 1, || bridge.run_request("flood")).await;
    assert_eq!(through.failures, 0, "the flood run succeeds");
    (plain, through.wall, bridge.peak_kib())
}

/// Codex turns run directly, as a person at a laptop would: in one CODEX_HOME used for every
/// turn, or in a new one made before the turn's clock starts, as each run through the bridge
/// has.
struct DirectCodex {
    codex_dir: PathBuf,
    root: PathBuf,
    reused: PathBuf,
}

impl DirectCodex {
    fn new(codex_dir: &Path, work: &Path) -> Self {
        let root = work.join("direct");
        let direct = Self {
            codex_dir: codex_dir.to_owned(),
            reused: root.join("reused"),
            root,
        };
        direct.make_home(&direct.reused);
        direct
    }

    /// The `n`th new home, with the login copied in.
    fn new_home(&self, n: usize) -> PathBuf {
        let home = self.root.join(format!("new-{n}"));
        self.make_home(&home);
        home
    }

    fn make_home(&self, home: &Path) {
        std::fs::create_dir_all(home).expect("a codex home");
        for file in ["auth.json", "config.toml"] {
            std::fs::copy(self.codex_dir.join(file), home.join(file)).expect("copy the login");
        }
    }

    /// One turn in `home`; whether it completed.
    fn turn(&self, home: &Path) -> impl std::future::Future<Output = bool> + use<> {
        let mut command = Command::new(codex_bin());
        command
            .args([
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox",
            ])
            .args([
                "--config",
                "analytics.enabled=false",
                "--disable",
                "plugins",
                "--disable",
                "unbounded_connection_retries",
            ])
            .args(["--", "hi"])
            .current_dir(home)
            // The environment the bridge itself was started with, as its runs get no
            // more: inherited CA bundles and the like cost Node and the CLI ~70 ms a start.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CODEX_HOME", home)
            .env("HOME", home)
            .stdin(Stdio::null());
        async move {
            let output = command.output().await;
            output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("turn.completed"))
        }
    }
}

/// Adds how long `request` took, and whether it succeeded, to `stats`.
async fn timed(stats: &mut Stats, request: impl std::future::Future<Output = bool>) {
    let started = Instant::now();
    let ok = request.await;
    stats.latencies.push(started.elapsed());
    stats.wall += started.elapsed();
    stats.failures += usize::from(!ok);
}

/// A CLI that prints 1 GiB in lines of 1 KiB, as fast as `yes` can.
const FLOOD: &str = "yes \"$(head -c 1023 /dev/zero | tr '\\000' x)\" | head -c 1073741824";

fn write_profiles(work: &Path) -> PathBuf {
    let dir = work.join("profiles");
    std::fs::create_dir_all(&dir).expect("a profile dir");
    let profiles = [
        (
            "trivial",
            "executable = \"/bin/echo\"\nargs = [\"{prompt}\"]\n".to_owned(),
        ),
        (
            "sleep1",
            "executable = \"/bin/sleep\"\nargs = [\"1\"]\n".to_owned(),
        ),
        (
            "flood",
            format!("executable = \"/bin/sh\"\nargs = [\"-c\", {FLOOD:?}]\n"),
        ),
    ];
    for (name, text) in profiles {
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("write a profile");
    }
    dir
}

fn codex_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/codex/node_modules/.bin/codex")
}

/// Debian's `webhook`, running /bin/echo per request and answering with its output.
struct Webhook {
    child: Child,
    url: String,
}

impl Webhook {
    async fn start(work: &Path) -> Option<Self> {
        let binary = ["/usr/bin/webhook", "/usr/local/bin/webhook"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let hooks = work.join("hooks.json");
        let config = json!([{
            "id": "run", "execute-command": "/bin/echo", "include-command-output-in-response": true,
            "pass-arguments-to-command": [{"source": "string", "name": "hi"}],
        }]);
        std::fs::write(&hooks, config.to_string()).expect("write hooks.json");
        let port = free_port();
        let child = Command::new(binary)
            .args([
                "-hooks",
                hooks.to_str().expect("utf-8 path"),
                "-ip",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let url = format!("http://127.0.0.1:{port}/hooks/run");
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if client.post(&url).send().await.is_ok() {
                return Some(Self { child, url });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn request(&self, client: &reqwest::Client) -> impl std::future::Future<Output = bool> + use<> {
        let request = client.post(&self.url);
        async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The printed result.
#[derive(Default)]
struct Table {
    lines: Vec<String>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.lines.push(String::new());
        self.lines.push(format!("## {title}"));
    }

    fn row(&mut self, what: &str, value: impl AsRef<str>, note: &str) {
        self.lines
            .push(format!("{what:<48} {:<44} {note}", value.as_ref()));
    }

    fn print(&self) {
        println!(
            "headless-bridge service benchmark ({} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for line in &self.lines {
            println!("{line}");
        }
    }
}
