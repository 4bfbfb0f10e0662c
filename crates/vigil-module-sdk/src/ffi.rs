//! The module side of the ABI: what `export_module!` calls.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{Buffer, STATUS_ERROR, STATUS_OK, STATUS_PANIC};

fn into_buffer(bytes: Vec<u8>) -> Buffer {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    Buffer {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "module panicked with a non-string payload".to_owned()
    }
}

/// Runs `func` on the argument bytes and writes its outcome to `out`.
///
/// # Safety
/// `args` must point to `args_len` readable bytes (or be null with
/// `args_len == 0`), and `out` must be valid for a write of one [`Buffer`].
pub unsafe fn run(
    args: *const u8,
    args_len: usize,
    out: *mut Buffer,
    func: fn(&str) -> Result<String, String>,
) -> i32 {
    if out.is_null() {
        return STATUS_ERROR;
    }
    let input: &[u8] = if args.is_null() || args_len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `args_len` readable bytes at `args`.
        unsafe { std::slice::from_raw_parts(args, args_len) }
    };
    let text = String::from_utf8_lossy(input);
    // The panic hook would print to the host's stderr; the message is
    // returned to the host instead.
    let outcome = catch_unwind(AssertUnwindSafe(|| func(&text)));
    let (status, bytes) = match outcome {
        Ok(Ok(result)) => (STATUS_OK, result.into_bytes()),
        Ok(Err(error)) => (STATUS_ERROR, error.into_bytes()),
        Err(payload) => (STATUS_PANIC, panic_message(payload.as_ref()).into_bytes()),
    };
    // SAFETY: the caller guarantees `out` is valid for one write.
    unsafe { out.write(into_buffer(bytes)) };
    status
}

/// Frees a buffer made by [`run`].
///
/// # Safety
/// `buffer` must come from [`run`] in this same module and not have been
/// freed before.
pub unsafe fn free(buffer: Buffer) {
    if buffer.ptr.is_null() {
        return;
    }
    // SAFETY: `ptr`, `len` and `cap` are those of a Vec<u8> that `run`
    // leaked with this module's allocator.
    drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(s: &str) -> Result<String, String> {
        match s {
            "fail" => Err("failed".into()),
            "panic" => panic!("boom"),
            other => Ok(other.to_uppercase()),
        }
    }

    fn call(input: &[u8]) -> (i32, String) {
        let mut out = Buffer::EMPTY;
        // SAFETY: valid input slice and output slot.
        let status = unsafe { run(input.as_ptr(), input.len(), &mut out, echo) };
        // SAFETY: the buffer was just produced by `run`.
        let text = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        // SAFETY: produced by `run`, freed once.
        unsafe { free(out) };
        (status, String::from_utf8(text).expect("utf8"))
    }

    #[test]
    fn ok_error_and_panic() {
        assert_eq!(call(b"hi"), (STATUS_OK, "HI".into()));
        assert_eq!(call(b"fail"), (STATUS_ERROR, "failed".into()));
        assert_eq!(call(b"panic"), (STATUS_PANIC, "boom".into()));
        assert_eq!(call(b""), (STATUS_OK, String::new()));
        assert_eq!(call(b"\xff"), (STATUS_OK, "\u{fffd}".into()));
    }
}
