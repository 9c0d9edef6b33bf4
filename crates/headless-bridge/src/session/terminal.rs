//! A program on a pseudo-terminal: started in a session of its own (so the terminal is its
//! controlling terminal and its process group is the session's), under the run shim, with
//! threads that carry its output, its input and its exit status to the async world.
//!
//! The terminal's master side is blocking, so one thread reads it and one writes it: a program
//! that stops reading its input can block only the writer thread, never a runtime worker.
//! The exit status is taken with waitpid(2) on a thread of its own.

use std::ffi::{OsStr, OsString};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use portable_pty::{CommandBuilder, MasterPty, PtySize};
use tokio::sync::{mpsc, oneshot};

use crate::reaper;
use crate::run::supervisor::ExitKind;

/// Bytes read from the terminal at a time.
const READ_CHUNK: usize = 16 << 10;
/// Chunks of output in flight between the reader thread and the session.
const OUTPUT_QUEUE: usize = 64;

/// What to start on the terminal.
#[derive(Debug, Clone)]
pub struct TerminalCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The whole environment; nothing of the bridge's is inherited.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// `NAME=value` every process of the session carries, for the sweep.
    pub marker: (String, String),
    /// The run shim, which keeps every process of the session below it.
    pub shim: Option<PathBuf>,
    pub run_as: Option<(u32, u32)>,
}

/// Why a terminal could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("failed to open a pseudo-terminal: {0}")]
    Pty(String),
    #[error("failed to start {program}: {message}")]
    Start { program: String, message: String },
    #[error(
        "the adapter runs as another user, which needs the run shim (HB_SHIM_BIN) on a terminal"
    )]
    RunAsNeedsShim,
}

/// A running program's terminal.
pub struct Terminal {
    /// The session leader: the shim, or the program itself.
    pub pid: Pid,
    /// Behind a lock only so the terminal can be shared across the actor's awaits.
    master: std::sync::Mutex<Box<dyn MasterPty + Send>>,
    input: std::sync::mpsc::Sender<Vec<u8>>,
    /// Kept so the child's handle lives as long as the terminal; its status is taken by pid.
    _child: Box<dyn portable_pty::Child + Send + Sync>,
}

/// A started terminal and the channels of its output and exit.
pub struct Spawned {
    pub terminal: Terminal,
    /// Output as it comes; closed once nothing holds the terminal open any more.
    pub output: mpsc::Receiver<Vec<u8>>,
    pub exit: oneshot::Receiver<ExitKind>,
}

/// Starts `command` on a new terminal of `rows` x `cols`.
pub fn spawn(command: &TerminalCommand, rows: u16, cols: u16) -> Result<Spawned, SpawnError> {
    let pty = portable_pty::native_pty_system()
        .openpty(size(rows, cols))
        .map_err(|e| SpawnError::Pty(e.to_string()))?;
    let builder = builder(command)?;
    let child = reaper::spawn_with(
        || {
            pty.slave
                .spawn_command(builder)
                .map_err(std::io::Error::other)
        },
        |child| child.process_id(),
    )
    .map_err(|e| SpawnError::Start {
        program: command.program.display().to_string(),
        message: e.to_string(),
    })?;
    // The program holds its own copies of the terminal; ours would keep the output open.
    drop(pty.slave);
    let pid = Pid::from_raw(child.process_id().expect("a started child has a pid") as i32);

    let master = pty.master;
    let reader = master
        .try_clone_reader()
        .map_err(|e| SpawnError::Pty(e.to_string()))?;
    let writer = master
        .take_writer()
        .map_err(|e| SpawnError::Pty(e.to_string()))?;
    let (output_tx, output) = mpsc::channel(OUTPUT_QUEUE);
    let (input, input_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (exit_tx, exit) = oneshot::channel();
    std::thread::spawn(move || read_output(reader, output_tx));
    std::thread::spawn(move || write_input(writer, input_rx));
    std::thread::spawn(move || {
        let status = wait_exit(pid);
        reaper::forget(Some(pid.as_raw() as u32));
        let _ = exit_tx.send(status);
    });

    Ok(Spawned {
        terminal: Terminal {
            pid,
            master: std::sync::Mutex::new(master),
            input,
            _child: child,
        },
        output,
        exit,
    })
}

impl Terminal {
    /// Queues bytes for the program's input.
    pub fn write(&self, bytes: Vec<u8>) {
        let _ = self.input.send(bytes);
    }

    /// Changes the terminal's size; the kernel tells the program with SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        self.master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .resize(size(rows, cols))
            .map_err(|e| e.to_string())
    }
}

/// Whether `program` is certainly absent: a path that does not exist, or a name that is in no
/// directory of `path`, searched as execvp(3) will search it (an empty entry is the working
/// directory `cwd`). Anything less certain, such as a directory that cannot be searched or no
/// PATH at all, is left to the start itself, which reports what went wrong.
pub fn is_missing(program: &Path, path: Option<&OsStr>, cwd: &Path) -> bool {
    let absent = |candidate: &Path| {
        std::fs::metadata(cwd.join(candidate)).is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            )
        })
    };
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return absent(program);
    }
    match path {
        Some(path) if !program.as_os_str().is_empty() => {
            std::env::split_paths(path).all(|dir| absent(&dir.join(program)))
        }
        _ => false,
    }
}

fn size(rows: u16, cols: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

fn builder(command: &TerminalCommand) -> Result<CommandBuilder, SpawnError> {
    let mut argv: Vec<OsString> = Vec::new();
    match &command.shim {
        Some(shim) => {
            argv.extend([shim.clone().into(), "--tty".into()]);
            if let Some((uid, gid)) = command.run_as {
                argv.extend(["--run-as".into(), format!("{uid}:{gid}").into()]);
            }
            argv.extend(["--".into(), command.program.clone().into()]);
        }
        None if command.run_as.is_some() => return Err(SpawnError::RunAsNeedsShim),
        None => argv.push(command.program.clone().into()),
    }
    argv.extend(command.args.iter().cloned());
    let mut builder = CommandBuilder::from_argv(argv);
    builder.env_clear();
    for (name, value) in &command.env {
        builder.env(name, value);
    }
    builder.env(&command.marker.0, &command.marker.1);
    builder.cwd(&command.cwd);
    Ok(builder)
}

fn read_output(mut reader: Box<dyn std::io::Read + Send>, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        // EIO is how Linux says every slave side is closed: the end of the output.
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

fn write_input(mut writer: Box<dyn std::io::Write + Send>, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
    for bytes in rx {
        if writer
            .write_all(&bytes)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

fn wait_exit(pid: Pid) -> ExitKind {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitKind::Code(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return ExitKind::Signal(signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // Reaped by someone else (it should not be): the status is lost.
            Err(_) => return ExitKind::Code(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_program_that_is_certainly_absent_is_missing() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("tool"), "").unwrap();
        std::fs::write(dir.path().join("here"), "").unwrap();
        let path = std::env::join_paths([bin.as_path(), Path::new("/nonexistent")]).unwrap();
        let with_cwd = std::env::join_paths([Path::new("/nonexistent"), Path::new("")]).unwrap();
        let cwd = dir.path();

        let cases: [(&str, Option<&OsStr>, bool); 8] = [
            ("/nonexistent/cli", None, true),
            ("bin/tool", None, false),
            ("bin/tool/below-a-file", None, true),
            ("tool", Some(&path), false),
            ("absent", Some(&path), true),
            // An empty entry of PATH is the working directory, as execvp(3) reads it.
            ("here", Some(&with_cwd), false),
            // Without a PATH, execvp(3) has a default of its own: the start decides.
            ("absent", None, false),
            ("", Some(&path), false),
        ];
        for (program, path, missing) in cases {
            assert_eq!(
                is_missing(Path::new(program), path, cwd),
                missing,
                "{program} {path:?}"
            );
        }
    }
}
