//! Helpers the tests of vigil's binaries share (`bins/vigil-server/tests/it`
//! and `bins/vigilctl/tests`), one module per behaviour:
//!
//! - [`bin`]: the path of a workspace binary, built first if the test's own
//!   package does not build it;
//! - [`process`]: a child process whose log (stderr) is captured, echoed
//!   and searched, and that is killed on drop;
//! - [`server`]: where a `vigil-server` started on port 0 listens, read
//!   from its log, and a client config pointed there;
//! - [`wait`]: polling until something holds, with a deadline;
//! - [`debian`]: programs from Debian packages, installed when missing;
//! - [`http`]: plain HTTP/1.1 requests written by hand, for answers no
//!   well-behaved client would provoke.
//!
//! It is a dev-dependency only, not published, and depends on no vigil
//! crate: it knows the binaries only by their names and log lines.
//! Helpers that one test crate alone needs stay in that crate.
#![deny(missing_docs)]

pub mod bin;
pub mod debian;
pub mod http;
pub mod process;
pub mod server;
pub mod wait;
