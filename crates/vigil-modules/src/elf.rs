//! Checks that bytes are a complete ELF shared object for this machine,
//! before they are handed to `dlopen`.
//!
//! A truncated file can be mapped and then fault with SIGBUS when a page
//! past its end is touched; a file for another architecture or a non-ELF
//! file fails in `dlopen` with a less helpful message. Only the fixed-size
//! header and the tables it points to are read; nothing is executed.

/// Why bytes are not a loadable module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// Too short to hold an ELF header.
    #[error("file is {0} bytes, too short for an ELF header: truncated or not a module")]
    TooShort(usize),
    /// No ELF magic.
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    /// 32-bit, big-endian, or another architecture.
    #[error("ELF file for another platform: {0}")]
    WrongPlatform(String),
    /// An executable, object file or core dump.
    #[error("ELF file is not a shared library (e_type {0})")]
    NotShared(u16),
    /// A table or segment reaches past the end of the file.
    #[error(
        "file is incomplete: {what} ends at byte {end} but the file has {len} bytes (truncated, or still being written)"
    )]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Where it ends.
        end: u64,
        /// File length.
        len: u64,
    },
    /// Bytes after the section table.
    #[error("file has {0} unexpected bytes after its section table")]
    TrailingData(u64),
}

const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;

#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: Option<u16> = Some(62);
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: Option<u16> = Some(183);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const HOST_MACHINE: Option<u16> = None;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn table_end(off: u64, entsize: u16, num: u16) -> u64 {
    off.saturating_add(u64::from(entsize).saturating_mul(u64::from(num)))
}

/// Checks that `bytes` are a complete 64-bit little-endian ELF shared
/// object for this machine's architecture: header, program headers and
/// every loadable segment inside the file, and the section table ending
/// exactly at the end of the file.
pub fn validate(bytes: &[u8]) -> Result<(), ElfError> {
    const HEADER: usize = 64;
    if bytes.len() < HEADER {
        return Err(ElfError::TooShort(bytes.len()));
    }
    if &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if bytes[4] != 2 {
        return Err(ElfError::WrongPlatform("not 64-bit".into()));
    }
    if bytes[5] != 1 {
        return Err(ElfError::WrongPlatform("not little-endian".into()));
    }
    let e_type = u16_at(bytes, 16);
    let machine = u16_at(bytes, 18);
    if let Some(host) = HOST_MACHINE
        && machine != host
    {
        return Err(ElfError::WrongPlatform(format!(
            "machine {machine}, this host is {host} ({})",
            std::env::consts::ARCH
        )));
    }
    if e_type != ET_DYN {
        return Err(ElfError::NotShared(e_type));
    }
    let len = bytes.len() as u64;
    let (phoff, shoff) = (u64_at(bytes, 32), u64_at(bytes, 40));
    let (phentsize, phnum) = (u16_at(bytes, 54), u16_at(bytes, 56));
    let (shentsize, shnum) = (u16_at(bytes, 58), u16_at(bytes, 60));

    let ph_end = table_end(phoff, phentsize, phnum);
    if ph_end > len {
        return Err(ElfError::Truncated {
            what: "program header table",
            end: ph_end,
            len,
        });
    }
    if phentsize >= 56 {
        for i in 0..u64::from(phnum) {
            // In bounds: the whole table was checked above.
            let at = usize::try_from(phoff + i * u64::from(phentsize)).unwrap_or(usize::MAX);
            if at.saturating_add(56) > bytes.len() {
                break;
            }
            if u32_at(bytes, at) != PT_LOAD {
                continue;
            }
            let end = u64_at(bytes, at + 8).saturating_add(u64_at(bytes, at + 32));
            if end > len {
                return Err(ElfError::Truncated {
                    what: "a loadable segment",
                    end,
                    len,
                });
            }
        }
    }
    if shoff != 0 {
        let sh_end = table_end(shoff, shentsize, shnum);
        if sh_end > len {
            return Err(ElfError::Truncated {
                what: "section header table",
                end: sh_end,
                len,
            });
        }
        if sh_end < len {
            return Err(ElfError::TrailingData(len - sh_end));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        // A 64-byte header with no tables: a valid (if useless) ET_DYN.
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        b[18..20].copy_from_slice(&HOST_MACHINE.unwrap_or(0).to_le_bytes());
        b
    }

    #[test]
    fn header_checks() {
        assert!(validate(&minimal()).is_ok());
        assert_eq!(validate(b"hello"), Err(ElfError::TooShort(5)));
        assert_eq!(validate(&[0u8; 64]), Err(ElfError::NotElf));
        let mut b = minimal();
        b[4] = 1;
        assert!(matches!(validate(&b), Err(ElfError::WrongPlatform(_))));
        let mut b = minimal();
        b[16] = 2;
        assert_eq!(validate(&b), Err(ElfError::NotShared(2)));
    }

    #[test]
    fn tables_past_the_end_are_truncation() {
        let mut b = minimal();
        b[40..48].copy_from_slice(&64u64.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(validate(&b), Err(ElfError::Truncated { .. })));
        b.resize(64 + 128, 0);
        assert!(validate(&b).is_ok());
        b.push(0);
        assert_eq!(validate(&b), Err(ElfError::TrailingData(1)));
    }
}
