//! What a module host may do, and the code that takes the rest away.
//!
//! The host confines itself in steps, each before the code it guards runs:
//!
//! 1. at start: it dies with its parent (`PR_SET_PDEATHSIG`), cannot gain
//!    privileges (`PR_SET_NO_NEW_PRIVS`) and writes no core dump;
//! 2. before the module's initialisers run: its address space is limited;
//! 3. after the module is mapped, before any call: few open files, Landlock
//!    rules (reads anywhere, writes only where the policy allows, no TCP
//!    unless it allows network, no signals or abstract sockets outside the
//!    sandbox; best effort by kernel ABI) and a seccomp allowlist (a system
//!    call outside it kills the host with `SIGSYS`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default address space of a module host.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Default most open files of a module host.
pub const DEFAULT_OPEN_FILES: u64 = 64;

/// What one module's host may do. The defaults: 1 GiB of address space,
/// 64 open files, no network, no file writes, reads anywhere the server's
/// user may read.
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
    /// write, create and remove.
    pub write_paths: Vec<PathBuf>,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            memory_mib: DEFAULT_MEMORY_MIB,
            open_files: DEFAULT_OPEN_FILES,
            network: false,
            write_paths: Vec::new(),
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
    Ok(format!("seccomp allowlist, landlock {landlock}"))
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
    let status = ruleset
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            &policy.write_paths,
            AccessFs::from_all(abi),
        ))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partly enforced (older kernel ABI)",
        RulesetStatus::NotEnforced => "not enforced (the kernel has no Landlock)",
    })
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
    "flock",
    "fsync",
    "fdatasync",
    "ftruncate",
    "mkdirat",
    "unlinkat",
    "renameat",
    "renameat2",
    "fchmod",
    "utimensat",
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
    "prlimit64",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "tgkill",
    "tkill",
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
    let mut filter: Vec<serde_json::Value> = ALLOWED
        .iter()
        .chain(if policy.network { NETWORK } else { &[] })
        .map(|name| json!({ "syscall": name }))
        .collect();
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
