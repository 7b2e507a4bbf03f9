//! The file layer under the log: a narrow trait, so tests can run the log on `SimStorage`
//! (power loss, injected faults) and production on `RealStorage` (std::fs, pwrite, fdatasync).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Directory and file operations the log needs, and nothing more.
///
/// Durability contract (what the log relies on): a file's written bytes and size are durable
/// once `StorageFile::sync_data` returns Ok; a name made by `create` or `rename`, or removed by
/// `remove`, is durable once `sync_dir` on its directory returns Ok.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `path` for reading and writing, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens the existing `path` for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks `path`; open handles keep working.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. Positional I/O only, so readers on other threads share it without a seek.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `off` (pwrite, looped until done).
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()>;
    /// Fills `buf` from `off` (pread, looped); `UnexpectedEof` if the file is shorter.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes the written bytes and the size durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's current size.
    fn len_bytes(&self) -> io::Result<u64>;
}

/// `Storage` on the real file system.
///
/// Directories are opened once, on their first `sync_dir`, and kept open: a later
/// directory fsync (a segment roll, a deletion) then needs no new descriptor, so a
/// shortage of descriptors can fail a roll's `create` (an outage that clears) but
/// never its directory fsync (which the log must treat as fatal).
#[derive(Debug, Default)]
pub struct RealStorage {
    dirs: Mutex<HashMap<PathBuf, Arc<File>>>,
}

impl Storage for RealStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let handle = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            match dirs.get(dir) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(dir)?);
                    dirs.insert(dir.to_owned(), f.clone());
                    f
                }
            }
        };
        handle.sync_all()
    }
}

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, off)
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }

    fn sync_data(&self) -> io::Result<()> {
        // fdatasync on Linux: the data and the size, not the other metadata.
        self.0.sync_data()
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
