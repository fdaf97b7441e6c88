//! Long-lived secret keys kept in the data directory (the dialog seal's route key, the
//! permit-token key): 32 random bytes in a file readable by the owner only, created on
//! first use, written and synced before use so that a restart (or kill -9) keeps the
//! dialogs and tokens issued before it valid. Several nodes share a key by sharing the
//! file. The bytes never reach a log.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Key length in bytes.
pub const KEY_LEN: usize = 32;

/// Reads `dir/name`, or creates it with fresh bytes from `fill` when it does not exist.
/// A file of another length is an error (a truncated key must not silently shrink).
pub fn load_or_create(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut [u8; KEY_LEN]),
) -> io::Result<[u8; KEY_LEN]> {
    let path = dir.join(name);
    match fs::File::open(&path) {
        Ok(mut f) => {
            let mut buf = Vec::with_capacity(KEY_LEN + 1);
            f.read_to_end(&mut buf)?;
            <[u8; KEY_LEN]>::try_from(buf.as_slice()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds {} bytes, not a {KEY_LEN}-byte key; remove it to make a new one",
                        path.display(),
                        buf.len()
                    ),
                )
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            let mut key = [0u8; KEY_LEN];
            fill(&mut key);
            // Written under a temporary name, synced, then renamed: a crash leaves
            // either no key or the whole key, never a partial one.
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = std::env::temp_dir().join(format!("permit-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = load_or_create(&dir, "route.key", |k| k.fill(7)).unwrap();
        assert_eq!(a, [7; KEY_LEN]);
        let b = load_or_create(&dir, "route.key", |k| k.fill(9)).unwrap();
        assert_eq!(b, a, "the stored key is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("route.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "owner only");
        }
        fs::write(dir.join("bad.key"), b"short").unwrap();
        let e = load_or_create(&dir, "bad.key", |k| k.fill(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
    }
}
