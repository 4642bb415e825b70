//! The check a library passes before it is loaded. The dynamic loader maps segments at the
//! offsets the ELF headers give; a segment that runs past the end of a truncated file (a build
//! caught mid-write, a half-copied file) faults with SIGBUS when it is touched, which kills the
//! host with nothing printed. So every header, segment and section must lie inside the file.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

/// Checks that `bytes` is a complete 64-bit ELF shared library; the error is one line.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    if !bytes.starts_with(&elf::ELFMAG) {
        return Err("not an ELF shared library".into());
    }
    let size = bytes.len() as u64;
    let header = elf::FileHeader64::<Endianness>::parse(bytes)
        .map_err(|e| format!("not a 64-bit ELF library ({e})"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("unreadable ELF header: {e}"))?;
    if header.e_type(endian) != elf::ET_DYN {
        return Err("an ELF file, but not a shared library".into());
    }
    let truncated = |what: String| format!("truncated or corrupt library ({size} bytes): {what}");
    let segments = header
        .program_headers(endian, bytes)
        .map_err(|e| truncated(format!("program headers: {e}")))?;
    for (i, ph) in segments.iter().enumerate() {
        let end = ph.p_offset(endian).checked_add(ph.p_filesz(endian));
        if end.is_none_or(|e| e > size) {
            return Err(truncated(format!(
                "segment {i} runs past the end of the file"
            )));
        }
    }
    let sections = header
        .section_headers(endian, bytes)
        .map_err(|e| truncated(format!("section headers: {e}")))?;
    for (i, sh) in sections.iter().enumerate() {
        if sh.sh_type(endian) == elf::SHT_NOBITS {
            continue;
        }
        let end = sh.sh_offset(endian).checked_add(sh.sh_size(endian));
        if end.is_none_or(|e| e > size) {
            return Err(truncated(format!(
                "section {i} runs past the end of the file"
            )));
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_passes_and_its_halves_do_not() {
        // The test executable is a PIE: an ELF of type ET_DYN, like a plugin.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        check(&exe).unwrap();
        for cut in [exe.len() / 2, exe.len() - 1, 64, 10] {
            assert!(check(&exe[..cut]).is_err(), "cut at {cut}");
        }
        assert!(check(b"not an ELF file").is_err());
    }
}
