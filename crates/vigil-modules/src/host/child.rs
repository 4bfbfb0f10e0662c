//! The module host process: loads one module version from the bytes the
//! server sends, confines itself, then answers calls until its input ends.
//!
//! The socket to the server is the host's standard input, which the host
//! moves to another descriptor and replaces with `/dev/null` before any
//! module code runs: module code that reads standard input or prints does
//! not touch the protocol. The bytes go into a sealed memfd, are hashed
//! again there, and that memfd is what `dlopen` maps: the code that runs is
//! the code whose sum the server announced.

use std::io::{BufReader, BufWriter, Read as _, Seek as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest as _, Sha256};

use super::{sandbox, wire};
use crate::loader::{Library, Outcome};

/// Why the host stops before serving.
#[derive(Debug, thiserror::Error)]
enum HostError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("protocol: {0}")]
    Protocol(String),
}

fn os(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> HostError {
    move |e| HostError::Os {
        what,
        source: e.into(),
    }
}

/// Runs the module host on this process's standard input. Meant to be the
/// whole `main` of the `vigil-module-host` binary, which the registry
/// starts; it is not a tool for people.
pub fn serve() -> ExitCode {
    match serve_channel() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-module-host: {e}");
            ExitCode::from(2)
        }
    }
}

/// Moves the socket off standard input and puts `/dev/null` there.
fn take_channel() -> Result<std::os::unix::net::UnixStream, HostError> {
    let stdin = std::io::stdin();
    let chan = rustix::io::fcntl_dupfd_cloexec(stdin.as_fd(), 3).map_err(os("dup stdin"))?;
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null).map_err(os("dup2 /dev/null"))?;
    let kind = rustix::fs::fstat(&chan).map_err(os("fstat"))?;
    if rustix::fs::FileType::from_raw_mode(kind.st_mode) != rustix::fs::FileType::Socket {
        return Err(HostError::Protocol(
            "standard input is not a socket: this program is started by vigil-server".into(),
        ));
    }
    Ok(std::os::unix::net::UnixStream::from(chan))
}

fn serve_channel() -> Result<(), HostError> {
    let chan = take_channel()?;
    let mut reader = BufReader::with_capacity(64 * 1024, chan.try_clone()?);
    let mut writer = BufWriter::with_capacity(64 * 1024, chan);
    let mut body = Vec::new();
    let tag = wire::read_frame(&mut reader, &mut body, wire::MAX_FRAME)?;
    if tag != Some(wire::LOAD) {
        return Err(HostError::Protocol(
            "the first message is not a load".into(),
        ));
    }
    let (load, bytes) = wire::parse_load(&body).map_err(HostError::Protocol)?;
    let (library, confinement) = match prepare(&load, bytes) {
        Ok(loaded) => loaded,
        Err(reason) => {
            wire::write_frame(&mut writer, wire::LOAD_ERROR, reason.as_bytes())?;
            writer.flush()?;
            return Ok(());
        }
    };
    let ready = wire::Ready {
        name: library.name().to_owned(),
        description: library.description().to_owned(),
        confinement,
    };
    let ready = serde_json::to_vec(&ready).map_err(|e| HostError::Protocol(e.to_string()))?;
    wire::write_frame(&mut writer, wire::READY, &ready)?;
    writer.flush()?;
    drop(body);
    let stream = writer.into_inner().map_err(|e| e.into_error())?;
    serve_calls(&library, &mut reader, Outbox::start(stream)?)
}

/// Checks the parent, hashes the bytes, confines the host and loads the
/// module: its initialisers already run inside the sandbox. Returns the
/// library and what of the sandbox the kernel enforces.
fn prepare(load: &wire::Load, bytes: &[u8]) -> Result<(Library, String), String> {
    match sandbox::at_start(load.parent) {
        Ok(true) => {}
        // The server is gone: nothing to serve.
        Ok(false) => std::process::exit(0),
        Err(e) => return Err(format!("cannot confine the module host: {e}")),
    }
    let sum = hex::encode(Sha256::digest(bytes));
    if sum != load.sum {
        return Err(format!(
            "the bytes received have sum {sum}, not the announced {}",
            load.sum
        ));
    }
    let memfd = sealed_copy(&load.name, bytes, &load.sum)
        .map_err(|e| format!("cannot hold the module in memory: {e}"))?;
    let confined =
        sandbox::limit_memory(&load.policy).and_then(|()| sandbox::confine(&load.policy));
    let confinement = confined.map_err(|e| format!("cannot confine the module host: {e}"))?;
    let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    let library = Library::open(std::path::Path::new(&path)).map_err(|e| e.to_string())?;
    // The mapping outlives the descriptor.
    drop(memfd);
    Ok((library, confinement))
}

/// The bytes in a memfd that can no longer change, hashed again from it.
fn sealed_copy(name: &str, bytes: &[u8], sum: &str) -> Result<OwnedFd, HostError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        format!("vigil-module:{name}"),
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(os("memfd_create"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )
    .map_err(os("seal"))?;
    file.rewind()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hex::encode(hasher.finalize()) != sum {
        return Err(HostError::Protocol(
            "the sealed copy does not have the announced sum".into(),
        ));
    }
    Ok(OwnedFd::from(file))
}

/// Answers on their way to the server: the thread that runs calls adds
/// them, a writer thread sends whatever has gathered in one write. An
/// answer leaves as soon as it is made (the server times each call from
/// the previous answer, so an answer must not wait behind a slow call),
/// and answers made while a write is under way share the next one.
struct Outbox {
    state: Mutex<Pending>,
    wake: Condvar,
    /// For answers written by the calling thread itself.
    stream: UnixStream,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer waits for answers.
    idle: bool,
}

impl Outbox {
    fn start(mut stream: UnixStream) -> Result<Arc<Outbox>, HostError> {
        let outbox = Arc::new(Outbox {
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stream: stream.try_clone()?,
        });
        let o = outbox.clone();
        std::thread::Builder::new()
            .name("answers".into())
            .spawn(move || {
                let mut out = Vec::new();
                loop {
                    {
                        let mut state = o.lock();
                        while state.bytes.is_empty() {
                            state.idle = true;
                            state = o
                                .wake
                                .wait(state)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        state.idle = false;
                        std::mem::swap(&mut out, &mut state.bytes);
                    }
                    if stream.write_all(&out).is_err() {
                        // The server is gone: nothing to answer to.
                        std::process::exit(0);
                    }
                    out.clear();
                }
            })?;
        Ok(outbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends an answer. When nothing is being written and no further call
    /// is waiting (`more` is false), the calling thread writes it itself,
    /// which saves waking the writer for one answer at a time.
    fn send(&self, tag: u8, seq: u64, body: &[u8], more: bool) {
        let mut state = self.lock();
        wire::numbered(&mut state.bytes, tag, seq, body);
        if state.idle && !more {
            // The writer waits for the lock to take anything, so nothing
            // can be written between these bytes.
            if (&self.stream).write_all(&state.bytes).is_err() {
                std::process::exit(0);
            }
            state.bytes.clear();
            return;
        }
        if state.idle {
            state.idle = false;
            drop(state);
            self.wake.notify_one();
        }
    }
}

/// Answers calls in order until the server closes the socket.
fn serve_calls(
    library: &Library,
    reader: &mut BufReader<UnixStream>,
    outbox: Arc<Outbox>,
) -> Result<(), HostError> {
    let mut args = Vec::new();
    loop {
        let Some(tag) = wire::read_frame(reader, &mut args, wire::MAX_FRAME)? else {
            return Ok(());
        };
        if tag != wire::CALL {
            return Err(HostError::Protocol(format!("unexpected message {tag:#x}")));
        }
        let Some((seq, call)) = wire::split_seq(&args) else {
            return Err(HostError::Protocol("a call without its number".into()));
        };
        let (tag, out) = match library.execute(call) {
            Outcome::Ok(b) | Outcome::Err(b) | Outcome::Panicked(b)
                if b.len() > wire::MAX_RESULT =>
            {
                let limit = format!(
                    "the module returned {} bytes, more than the {}-byte limit of a result",
                    b.len(),
                    wire::MAX_RESULT
                );
                (wire::LIMIT, limit.into_bytes())
            }
            Outcome::Ok(b) => (wire::OK, b),
            Outcome::Err(b) => (wire::FAILED, b),
            Outcome::Panicked(b) => (wire::PANICKED, b),
        };
        outbox.send(tag, seq, &out, !reader.buffer().is_empty());
    }
}
