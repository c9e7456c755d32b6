//! The dynamic section of an ELF64 shared object: its `DT_SONAME`,
//! `DT_NEEDED`, `DT_RPATH` and `DT_RUNPATH` entries, read through the
//! program headers (`PT_DYNAMIC`, with `DT_STRTAB` mapped through the
//! `PT_LOAD` segments), as the dynamic loader reads them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::{Error, Result};

/// What the dynamic loader reads from a shared object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries (colon-separated in the file), unexpanded.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries, unexpanded.
    pub runpath: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

// invariant (the three readers): callers read inside buffers whose length
// they checked (`read_at` returned exactly that many bytes).
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the dynamic section of the little-endian ELF64 file at `path`.
pub fn read_dynamic(path: &Path) -> Result<Dynamic> {
    let bad = |what: &str| Error::invalid("ELF file", format!("{}: {what}", path.display()));
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut read_at = |offset: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::io("reading", path, e))?;
        Ok(buf)
    };
    let ehdr = read_at(0, 64)?;
    if &ehdr[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(bad("not a little-endian 64-bit ELF file"));
    }
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36) as usize;
    let phnum = u16_at(&ehdr, 0x38) as usize;
    if phentsize < 56 || phnum == 0 || phnum > 4096 {
        return Err(bad("no usable program headers"));
    }
    let ph = read_at(phoff, phentsize * phnum)?;
    let mut loads = Vec::new(); // (vaddr, filesz, offset)
    let mut dynamic = None; // (offset, filesz)
    for i in 0..phnum {
        let h = &ph[i * phentsize..];
        let (kind, offset) = (u32_at(h, 0), u64_at(h, 8));
        let (vaddr, filesz) = (u64_at(h, 16), u64_at(h, 32));
        match kind {
            PT_LOAD => loads.push((vaddr, filesz, offset)),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(Dynamic::default()); // statically linked
    };
    if dyn_size > 1 << 20 {
        return Err(bad("dynamic section larger than 1 MiB"));
    }
    let table = read_at(dyn_off, dyn_size as usize)?;
    let mut entries = Vec::new();
    let (mut strtab, mut strsz) = (None, None);
    for e in table.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0), u64_at(e, 8));
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
            _ => {}
        }
    }
    let mut out = Dynamic::default();
    if entries.is_empty() {
        return Ok(out);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(bad("dynamic section without DT_STRTAB/DT_STRSZ"));
    };
    let str_off = loads
        .iter()
        // Checked arithmetic: a lying header must not overflow.
        .find(|(vaddr, size, _)| strtab >= *vaddr && strtab - vaddr < *size)
        .and_then(|(vaddr, _, offset)| (strtab - vaddr).checked_add(*offset))
        .ok_or_else(|| bad("DT_STRTAB outside every PT_LOAD segment"))?;
    if strsz > 64 << 20 {
        return Err(bad("string table larger than 64 MiB"));
    }
    let strings = read_at(str_off, strsz as usize)?;
    let string = |at: u64| -> Result<String> {
        let s = strings
            .get(at as usize..)
            .ok_or_else(|| bad("string offset past DT_STRSZ"))?;
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let split = |s: String| -> Vec<String> {
        s.split(':')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    for (tag, val) in entries {
        let s = string(val)?;
        match tag {
            DT_NEEDED => out.needed.push(s),
            DT_SONAME => out.soname = Some(s),
            DT_RPATH => out.rpath.extend(split(s)),
            _ => out.runpath.extend(split(s)),
        }
    }
    Ok(out)
}

impl Dynamic {
    /// The directories the loader searches first for this object's
    /// dependencies (and for its `dlopen` calls): `DT_RUNPATH` if present,
    /// else `DT_RPATH`, with `$ORIGIN` (and `${ORIGIN}`) replaced by `origin`,
    /// the directory holding the object.
    pub fn search_dirs(&self, origin: &Path) -> Vec<std::path::PathBuf> {
        let dirs = if self.runpath.is_empty() {
            &self.rpath
        } else {
            &self.runpath
        };
        let o = origin.to_string_lossy();
        dirs.iter()
            .map(|d| std::path::PathBuf::from(d.replace("${ORIGIN}", &o).replace("$ORIGIN", &o)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_test_binary_and_refuses_non_elf() {
        // This test's own executable is a dynamically linked ELF64 file.
        let exe = std::env::current_exe().unwrap();
        let d = read_dynamic(&exe).unwrap();
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        let dir = std::env::temp_dir().join(format!("meshtrain-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("not-elf.so");
        std::fs::write(&text, vec![b'x'; 128]).unwrap();
        let e = read_dynamic(&text).unwrap_err().to_string();
        assert!(
            e.contains("not an ELF file") && e.contains("not-elf.so"),
            "{e}"
        );
        let short = dir.join("short.so");
        std::fs::write(&short, b"\x7fELF").unwrap();
        assert!(read_dynamic(&short).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An ELF header, one PT_LOAD and one PT_DYNAMIC program header, and a
    /// dynamic section naming a string table at `strtab`.
    fn lying_elf(load_vaddr: u64, load_size: u64, load_offset: u64, strtab: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let ph = |kind: u32, offset: u64, vaddr: u64, size: u64| {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[16..24].copy_from_slice(&vaddr.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h
        };
        let dyn_at = 64 + 2 * 56;
        f.extend(ph(PT_LOAD, load_offset, load_vaddr, load_size));
        f.extend(ph(PT_DYNAMIC, dyn_at as u64, 0, 48));
        for (tag, val) in [(DT_NEEDED, 0), (DT_STRTAB, strtab), (DT_STRSZ, 8)] {
            f.extend(tag.to_le_bytes());
            f.extend(val.to_le_bytes());
        }
        f
    }

    #[test]
    fn lying_segment_addresses_are_errors_not_overflows() {
        let dir = std::env::temp_dir().join(format!("meshtrain-elf-lie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lying.so");
        // A segment reaching past the address space: read, no overflow.
        std::fs::write(&path, lying_elf(u64::MAX - 4, u64::MAX, 0, u64::MAX - 1)).unwrap();
        let _ = read_dynamic(&path);
        // A file offset that overflows: an error naming the file.
        std::fs::write(&path, lying_elf(0, u64::MAX, u64::MAX, 16)).unwrap();
        let e = read_dynamic(&path).unwrap_err().to_string();
        assert!(e.contains("lying.so") && e.contains("DT_STRTAB"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn search_dirs_expand_origin_and_prefer_runpath() {
        let mut d = Dynamic {
            rpath: vec!["$ORIGIN/../lib".into(), "/opt/x".into()],
            ..Default::default()
        };
        let o = Path::new("/a/b");
        assert_eq!(
            d.search_dirs(o),
            vec![std::path::PathBuf::from("/a/b/../lib"), "/opt/x".into()]
        );
        d.runpath = vec!["${ORIGIN}".into()];
        assert_eq!(d.search_dirs(o), vec![std::path::PathBuf::from("/a/b")]);
    }
}
