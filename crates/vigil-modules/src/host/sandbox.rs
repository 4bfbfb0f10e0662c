//! What a module host may do, and the code that takes the rest away.
//!
//! The host confines itself in steps, each before the code it guards runs:
//!
//! 1. at start: it dies with its parent (`PR_SET_PDEATHSIG`), cannot gain
//!    privileges (`PR_SET_NO_NEW_PRIVS`), gives up every capability (also
//!    when the server runs as root), cannot be dumped or traced by its
//!    user's other processes and writes no core dump;
//! 2. before the module is mapped (so its initialisers run confined): its
//!    address space and open files are limited, Landlock rules apply
//!    (reads only beneath the system's library directories and what the
//!    policy names, writes only where it allows, no TCP unless it allows
//!    network, no signals or abstract sockets outside the sandbox) and a
//!    seccomp allowlist (a system call outside it kills the host with
//!    `SIGSYS`). A kernel that cannot enforce all of the Landlock rules
//!    refuses the module unless its policy says `best_effort`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default address space of a module host.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Default most open files of a module host.
pub const DEFAULT_OPEN_FILES: u64 = 64;

/// What one module's host may do. The defaults: 1 GiB of address space,
/// 64 open files, no network, no file writes, reads only beneath
/// [`SYSTEM_READ_PATHS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SandboxPolicy {
    /// Address space of the host in MiB (`RLIMIT_AS`); an allocation past
    /// it fails, which ends a Rust module with `module_limit`.
    pub memory_mib: u64,
    /// Most open files (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// May open sockets and make TCP connections.
    pub network: bool,
    /// Files and directories (and everything beneath them) the module may
    /// write, create and remove (and read).
    pub write_paths: Vec<PathBuf>,
    /// Files and directories (and everything beneath them) the module may
    /// read, besides [`SYSTEM_READ_PATHS`].
    pub read_paths: Vec<PathBuf>,
    /// Run the module even when the kernel cannot enforce every Landlock
    /// rule (an older kernel); the host's `confinement` says what holds.
    pub best_effort: bool,
}

/// What every module may read: the system's libraries (which `dlopen` may
/// need), its own `/proc` entries, the kernel's identity, and the usual
/// devices. Not `/etc` (which holds `/etc/shadow`), not the server's
/// directories (which hold its keys): a module that needs more names it in
/// [`SandboxPolicy::read_paths`].
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/proc/self",
    "/proc/sys/kernel",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
];

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            memory_mib: DEFAULT_MEMORY_MIB,
            open_files: DEFAULT_OPEN_FILES,
            network: false,
            write_paths: Vec::new(),
            read_paths: Vec::new(),
            best_effort: false,
        }
    }
}

/// Why the host could not confine itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("seccomp: {0}")]
    SeccompBackend(#[from] seccompiler::BackendError),
    #[error(
        "the kernel enforces the module's Landlock rules only {0}; the module is not run (set best_effort in its [sandbox] table to run it anyway)"
    )]
    NotEnforced(&'static str),
}

fn os(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> SandboxError {
    move |e| SandboxError::Os {
        what,
        source: e.into(),
    }
}

/// Step 1: die with the parent, no new privileges, no core dumps. Returns
/// `false` when the parent is not `parent` any more (it died before the
/// death signal was armed): the host must exit.
pub(crate) fn at_start(parent: u32) -> Result<bool, SandboxError> {
    use rustix::process::{Resource, Rlimit, Signal};
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(os("PR_SET_PDEATHSIG"))?;
    let alive =
        rustix::process::getppid().is_some_and(|p| p.as_raw_nonzero().get() as u32 == parent);
    rustix::thread::set_no_new_privs(true).map_err(os("PR_SET_NO_NEW_PRIVS"))?;
    drop_capabilities()?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(os("PR_SET_DUMPABLE"))?;
    rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(os("RLIMIT_CORE"))?;
    Ok(alive)
}

/// Gives up every capability: the bounding set (where the host may drop
/// them: it needs `CAP_SETPCAP`, which only a privileged server has), the
/// ambient set, and the effective, permitted and inheritable sets.
fn drop_capabilities() -> Result<(), SandboxError> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    for bit in 0..64 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if rustix::thread::capability_is_in_bounding_set(cap).unwrap_or(false) {
            // EPERM without CAP_SETPCAP: such a host has no capabilities.
            let _ = rustix::thread::remove_capability_from_bounding_set(cap);
        }
    }
    let _ = rustix::thread::clear_ambient_capability_set();
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .map_err(os("capset"))
}

/// Step 2: the address space limit.
pub(crate) fn limit_memory(policy: &SandboxPolicy) -> Result<(), SandboxError> {
    let bytes = policy.memory_mib.saturating_mul(1024 * 1024);
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        },
    )
    .map_err(os("RLIMIT_AS"))
}

/// Step 3: open files, Landlock, seccomp. Returns what the kernel
/// enforces, for the server's log.
pub(crate) fn confine(policy: &SandboxPolicy) -> Result<String, SandboxError> {
    let files = policy.open_files.max(8);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(files),
            maximum: Some(files),
        },
    )
    .map_err(os("RLIMIT_NOFILE"))?;
    let landlock = landlock(policy)?;
    seccomp(policy)?;
    Ok(format!(
        "no capabilities, seccomp allowlist, landlock {landlock}"
    ))
}

fn landlock(policy: &SandboxPolicy) -> Result<&'static str, SandboxError> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        Scope, path_beneath_rules,
    };
    let abi = ABI::V6;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::from_all(abi))?;
    if !policy.network {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    let reads = SYSTEM_READ_PATHS
        .iter()
        .map(PathBuf::from)
        .chain(policy.read_paths.iter().cloned())
        .filter(|p| p.exists());
    let status = ruleset
        .create()?
        .add_rules(path_beneath_rules(reads, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            &policy.write_paths,
            AccessFs::from_all(abi),
        ))?
        .restrict_self()?;
    let (enforced, text) = match status.ruleset {
        RulesetStatus::FullyEnforced => (true, "fully enforced"),
        RulesetStatus::PartiallyEnforced => (false, "partly enforced (older kernel ABI)"),
        RulesetStatus::NotEnforced => (false, "not enforced (the kernel has no Landlock)"),
    };
    if !enforced && !policy.best_effort {
        return Err(SandboxError::NotEnforced(text));
    }
    Ok(text)
}

/// System calls any module host needs: memory, threads, time, files
/// (which Landlock restricts), signals for its own threads.
const ALLOWED: &[&str] = &[
    "read",
    "write",
    // The host's socket to the server (no socket can be made without
    // network, so these reach only it).
    "sendto",
    "recvfrom",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "close",
    "fstat",
    "newfstatat",
    "statx",
    "lseek",
    "openat",
    "faccessat",
    "faccessat2",
    "readlinkat",
    "getdents64",
    "getcwd",
    "fcntl",
    "fsync",
    "fdatasync",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "brk",
    "membarrier",
    "futex",
    "set_robust_list",
    "get_robust_list",
    "set_tid_address",
    "rseq",
    "sched_yield",
    "sched_getaffinity",
    "getrandom",
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "gettimeofday",
    "nanosleep",
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getrusage",
    "uname",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "ppoll",
    "pselect6",
    "eventfd2",
    "pipe2",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "exit",
    "exit_group",
    #[cfg(target_arch = "x86_64")]
    "open",
    #[cfg(target_arch = "x86_64")]
    "stat",
    #[cfg(target_arch = "x86_64")]
    "lstat",
    #[cfg(target_arch = "x86_64")]
    "access",
    #[cfg(target_arch = "x86_64")]
    "readlink",
    #[cfg(target_arch = "x86_64")]
    "poll",
    #[cfg(target_arch = "x86_64")]
    "epoll_wait",
    #[cfg(target_arch = "x86_64")]
    "arch_prctl",
];

/// System calls of a module allowed to write files (Landlock says where;
/// there is no `fchmod`, `fchown` or `utimensat` for any module: Landlock
/// does not govern those).
const WRITE: &[&str] = &["ftruncate", "mkdirat", "unlinkat", "renameat", "renameat2"];

/// System calls of a module allowed network.
const NETWORK: &[&str] = &[
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "setsockopt",
    "getsockopt",
    "getsockname",
    "getpeername",
    "shutdown",
];

const CLONE_THREAD: u64 = 0x0001_0000;
const PR_SET_NAME: u64 = 15;
const PR_GET_NAME: u64 = 16;
const ENOSYS: u32 = 38;

fn seccomp(policy: &SandboxPolicy) -> Result<(), SandboxError> {
    use serde_json::json;
    let writes = !policy.write_paths.is_empty();
    let mut filter: Vec<serde_json::Value> = ALLOWED
        .iter()
        .chain(if policy.network { NETWORK } else { &[] })
        .chain(if writes { WRITE } else { &[] })
        .map(|name| json!({ "syscall": name }))
        .collect();
    // Reading its own limits (the C library does at thread start), never
    // setting them, and never another process's (the server's).
    filter.push(json!({
        "syscall": "prlimit64",
        "args": [
            { "index": 0, "type": "dword", "op": "eq", "val": 0 },
            { "index": 2, "type": "qword", "op": "eq", "val": 0 }
        ]
    }));
    // Signals to its own threads only (abort raises SIGABRT this way).
    let me = rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs();
    filter.push(json!({
        "syscall": "tgkill",
        "args": [{ "index": 0, "type": "dword", "op": "eq", "val": me }]
    }));
    // Threads, not processes: clone only with CLONE_THREAD. clone3 passes
    // the allowlist and is answered ENOSYS by the second filter (when
    // filters are stacked the strictest answer wins).
    filter.push(json!({ "syscall": "clone3" }));
    filter.push(json!({
        "syscall": "clone",
        "args": [{ "index": 0, "type": "qword", "op": { "masked_eq": CLONE_THREAD }, "val": CLONE_THREAD }]
    }));
    // Naming a thread is the only prctl left.
    for option in [PR_SET_NAME, PR_GET_NAME] {
        filter.push(json!({
            "syscall": "prctl",
            "args": [{ "index": 0, "type": "dword", "op": "eq", "val": option }]
        }));
    }
    let spec = json!({
        "allow": {
            "mismatch_action": "kill_process",
            "filter_action": "allow",
            "filter": filter,
        },
        // clone3 takes its flags in memory, which a filter cannot read: it
        // answers ENOSYS, and the C library falls back to clone.
        "no_clone3": {
            "mismatch_action": "allow",
            "filter_action": { "errno": ENOSYS },
            "filter": [{ "syscall": "clone3" }],
        },
    });
    let arch: seccompiler::TargetArch = std::env::consts::ARCH.try_into()?;
    let text = spec.to_string();
    let programs = seccompiler::compile_from_json(text.as_bytes(), arch)?;
    // The allowlist last: installing a filter needs prctl and seccomp,
    // which it does not allow.
    for name in ["no_clone3", "allow"] {
        if let Some(program) = programs.get(name) {
            seccompiler::apply_filter(program)?;
        }
    }
    Ok(())
}
