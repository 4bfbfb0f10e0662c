//! The module file validator, which every file in the mods directory meets
//! before anything is loaded: never panics on any bytes, and accepts only
//! what is a complete ELF shared object for this machine.
//!
//! `cargo fuzz run module_file --sanitizer none` (or `just fuzz module_file`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if vigil_modules::validate_elf(data).is_ok() {
        // Whatever it accepts starts like an ELF file.
        assert!(data.starts_with(b"\x7fELF"));
    }
});
