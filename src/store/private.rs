//! The data dir is private to the user running syncctl: it holds QuickBooks' refresh
//! and access tokens (`syncctl.db` and its WAL), and invoice backups and reports with
//! buyers' tax ids, names and totals. Its folders are `0700` and every file in it
//! `0600` — created so, and fixed at start in a data dir an older version (or the
//! umask) left readable by others. This module only ever narrows permissions.

use std::path::Path;

/// A folder of the data dir.
pub const DIR_MODE: u32 = 0o700;
/// A file of the data dir.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and any missing parent) as `0700`.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    b.create(dir)
}

/// Options that create a file as `0600` (write, create, truncate).
pub fn file_options() -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts
}

/// Writes `bytes` to `path` through `path.<ext>.tmp` and a rename (a crash never leaves
/// half a file), the file `0600`.
pub fn write_atomic(path: &Path, tmp_ext: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(tmp_ext);
    {
        let mut f = file_options().open(&tmp)?;
        narrow(&f.metadata()?, &tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Creates `dir` as `0700` if missing, then makes it, every folder under it `0700` and
/// every file under it `0600` (symbolic links are left alone, and not followed).
/// Returns how many entries were narrowed.
pub fn secure_tree(dir: &Path) -> std::io::Result<usize> {
    create_dir(dir)?;
    let mut fixed = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d)?;
        fixed += usize::from(narrow(&meta, &d)?);
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                fixed += usize::from(narrow(&meta, &path)?);
            }
        }
    }
    Ok(fixed)
}

/// Takes every permission away from group and others (folders also get the owner's
/// `rwx`). True when it changed something.
#[cfg(unix)]
fn narrow(meta: &std::fs::Metadata, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() {
        DIR_MODE
    } else {
        mode & FILE_MODE
    };
    if mode == want {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    Ok(true)
}

#[cfg(not(unix))]
fn narrow(_meta: &std::fs::Metadata, _path: &Path) -> std::io::Result<bool> {
    Ok(false)
}
