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

/// The permit-token key ring from the data directory: `token.key` (created on first
/// use) signs; `token.previous.key`, when present, still verifies, so a rotation (move
/// `token.key` to `token.previous.key` and restart) drops no call in flight. A key's id
/// is taken from a hash of the key, never from its bytes.
pub fn token_ring(
    dir: &Path,
    fill: impl FnOnce(&mut [u8; KEY_LEN]),
) -> io::Result<sip_core::permit::KeyRing> {
    use sha2::{Digest, Sha256};
    use sip_core::permit::{KeyId, KeyRing, ProxyKey};
    let id = |k: &[u8; KEY_LEN]| {
        let d = Sha256::digest(k);
        KeyId(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    };
    let current = load_or_create(dir, "token.key", fill)?;
    let ring = match fs::read(dir.join("token.previous.key")) {
        Ok(prev) => {
            let prev = <[u8; KEY_LEN]>::try_from(prev.as_slice()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "token.previous.key is not a 32-byte key",
                )
            })?;
            KeyRing::with_previous(
                (id(&current), ProxyKey::from_bytes(current)),
                (id(&prev), ProxyKey::from_bytes(prev)),
            )
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "token.previous.key equals token.key",
                )
            })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            KeyRing::new(id(&current), ProxyKey::from_bytes(current))
        }
        Err(e) => return Err(e),
    };
    Ok(ring)
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

    #[test]
    fn token_rotation_keeps_tokens_in_flight() {
        use sip_core::permit::{Token, TokenClaims};
        let dir = std::env::temp_dir().join(format!("permit-tkeys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let claims = TokenClaims::new("sip:a@x", "sip:b@x", "cid");
        let mut rng = rand::rng();
        let old = token_ring(&dir, |k| k.fill(1)).unwrap();
        let t = Token::issue(&old, &claims, 1000, 60, &mut rng);
        fs::rename(dir.join("token.key"), dir.join("token.previous.key")).unwrap();
        let new = token_ring(&dir, |k| k.fill(2)).unwrap();
        assert_ne!(new.current_id(), old.current_id());
        new.verify(&t, &claims, 1001)
            .expect("old token still verifies");
        fs::remove_file(dir.join("token.previous.key")).unwrap();
        let only_new = token_ring(&dir, |k| k.fill(3)).unwrap();
        assert!(only_new.verify(&t, &claims, 1001).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
