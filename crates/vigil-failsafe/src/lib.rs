//! vigil failsafe: a dead-man's switch that fires when verified messages
//! stop arriving.
//!
//! - [`DeadmanSwitch`] is the core, without I/O and without a clock: feed it
//!   on every verified message, poll it when its
//!   [deadline](DeadmanSwitch::deadline) comes, and it reports
//!   [`FailsafeEvent::Fired`] once per outage and
//!   [`FailsafeEvent::Rearmed`] when fed again.
//! - [`spawn`] runs it on tokio: [`FailsafeHandle::feed`] (cheap,
//!   cloneable) feeds it, and a task that sleeps until the deadline sends
//!   the events to [`FailsafeEvents`], including how late the firing was.
//!
//! The switch does not know why it is fed or what firing means: the caller
//! feeds it only with messages it verified (so garbage, forged, stale or
//! replayed frames never reset it) and runs the break commands on `Fired`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use vigil_failsafe::{DeadmanSwitch, FailsafeEvent};
//!
//! let start = Instant::now();
//! let mut switch = DeadmanSwitch::new(Duration::from_secs(15), start)?;
//! switch.feed(start + Duration::from_secs(5));
//! assert_eq!(switch.deadline(), Some(start + Duration::from_secs(20)));
//! let fired = switch.poll(start + Duration::from_secs(21));
//! assert_eq!(
//!     fired,
//!     Some(FailsafeEvent::Fired {
//!         silent_for: Duration::from_secs(16),
//!         late_by: Duration::from_secs(1),
//!     })
//! );
//! # Ok::<(), vigil_failsafe::FailsafeError>(())
//! ```
#![deny(missing_docs)]

mod core;
mod driver;

pub use crate::core::{DeadmanSwitch, FailsafeError, FailsafeEvent};
pub use crate::driver::{FailsafeEvents, FailsafeHandle, spawn};

/// The FailsafeAPI default timeout: 15 seconds without a verified message.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
