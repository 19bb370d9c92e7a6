//! Durable local file operations: exclusive temp files, fsync, atomic rename, directory fsync.
//!
//! Used by the local store and by restore. It owns the "readers see all of it or none of it"
//! discipline for local files (rustic's `local.rs`: tmp, `sync_all`, rename); it does not know
//! what the files contain.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Create a new file that did not exist (`O_EXCL`, `O_NOFOLLOW`) with `mode`, named
/// `.{stem}.{tag}-{random}` in `dir`. A planted file or symlink at that name makes it fail
/// rather than follow it.
pub fn create_temp(dir: &Path, stem: &str, tag: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    for _ in 0..16 {
        let path = dir.join(format!(".{stem}.{tag}-{}", random_hex(6)));
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("could not find a free temporary name in {}", dir.display()),
    ))
}

/// What kind of file `m` describes, for messages: "a directory", "a FIFO (named pipe)", ...
pub fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Open `path` read-only, following symlinks, and fail with [`io::ErrorKind::InvalidInput`]
/// ("is a FIFO (named pipe), not a regular file") unless it is a regular file. `O_NONBLOCK`
/// makes opening a FIFO or a device return at once instead of waiting for a writer forever;
/// it changes nothing for a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let m = file.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind(&m)),
        ));
    }
    Ok(file)
}

/// fsync a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Random lowercase hex of `bytes` bytes (for temp names and snapshot ids).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    hex::encode(buf)
}

/// Removes a temp file on drop unless [`TempGuard::disarm`] was called.
#[derive(Debug)]
pub struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    pub fn new(path: PathBuf) -> Self {
        TempGuard { path: Some(path) }
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("guard is armed")
    }

    /// Keep the file: it has been renamed into place.
    pub fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Entries of `dir` named `{prefix}{pid}-…` whose process is gone: the leftovers of runs that
/// were killed (SIGKILL, power loss). Entries of live processes are never returned.
pub fn dead_leftovers(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|pid| !pid_alive(pid))
        })
        .map(|entry| entry.path())
        .collect()
}

/// True if a process with this pid exists (EPERM means it exists but is not ours).
pub fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Read until `buf` is full or the source ends.
pub fn read_full(src: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
