//! Integration tests for vigil-command: Python-signed fixtures, the order of
//! the checks, forgeries, and the replay guard on real files.

mod manifest;
mod props;
mod python;
mod replay;
mod verify;

use std::time::{Duration, SystemTime};

use vigil_command::Timestamp;

/// 2025-01-01T12:00:00Z plus `secs`.
pub fn at(secs: i64) -> SystemTime {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800);
    if secs >= 0 {
        base + Duration::from_secs(secs.unsigned_abs())
    } else {
        base - Duration::from_secs(secs.unsigned_abs())
    }
}

pub fn ts(secs: i64) -> Timestamp {
    Timestamp::from_system_time(at(secs)).expect("timestamp")
}
