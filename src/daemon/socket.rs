//! The listening sockets of the volumes: made with an explicit mode and
//! group (never from the umask), never taken over from a live daemon, and
//! removed on exit only while they are still ours.

use std::{
    ffi::CString,
    io,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use vhost::vhost_user::Listener;

/// Who may connect to a socket: file mode bits and an optional group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub mode: u32,
    pub gid: Option<u32>,
}

/// A socket this daemon made, to be removed on exit if still the same file.
#[derive(Debug)]
pub struct Bound {
    pub path: PathBuf,
    dev_ino: (u64, u64),
}

impl Bound {
    /// Removes the socket file unless another process replaced it since.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Resolves a group name (or a numeric gid) to a gid.
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| "contains a NUL byte".to_string())?;
    let mut grp: libc::group = unsafe_zeroed_group();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by
    // this frame (`name` is NUL-terminated, `buf.len()` is passed with
    // `buf`); getgrnam_r writes only into `grp`, `buf` and `out`.
    let r = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r).to_string());
    }
    if out.is_null() {
        return Err("no such group".into());
    }
    Ok(grp.gr_gid)
}

fn unsafe_zeroed_group() -> libc::group {
    // SAFETY: libc::group is a plain C struct of integers and pointers, for
    // which all-zero bytes (null pointers) are a valid value.
    unsafe { std::mem::zeroed() }
}

/// True when a live process accepts connections on the socket at `path`.
pub fn served_by_someone(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// A listening socket at `path` with the given access. A socket a live
/// process still serves is refused; a stale one (nobody listening) is
/// replaced. The socket is bound, given its mode and group, and listening
/// under a temporary name first, then renamed into place, so a client never
/// finds it with the wrong permissions or not yet listening.
pub fn listen(path: &Path, access: Access) -> io::Result<(Listener, Bound)> {
    if path.exists() && served_by_someone(path) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is serving this socket (a second tierblk?); refusing to take it over",
        ));
    }
    let tmp = path.with_file_name(format!(".tierblk-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let sock = UnixListener::bind(&tmp)?;
    let made = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(access.mode))?;
        if let Some(gid) = access.gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let m = std::fs::symlink_metadata(path)?;
    Ok((
        Listener::from(sock),
        Bound {
            path: path.to_path_buf(),
            dev_ino: (m.dev(), m.ino()),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_gets_exact_mode_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.sock");
        // SAFETY: umask only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0) };
        let r = listen(
            &p,
            Access {
                mode: 0o600,
                gid: None,
            },
        );
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let (_l, bound) = r.unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        bound.remove();
        assert!(!p.exists());
    }

    #[test]
    fn live_socket_is_not_taken_over_and_stale_one_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.sock");
        let (l1, b1) = listen(
            &p,
            Access {
                mode: 0o600,
                gid: None,
            },
        )
        .unwrap();
        let Err(e) = listen(
            &p,
            Access {
                mode: 0o600,
                gid: None,
            },
        ) else {
            panic!("a live socket was taken over");
        };
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(l1); // the first "daemon" dies without cleaning up
        let (_l2, b2) = listen(
            &p,
            Access {
                mode: 0o600,
                gid: None,
            },
        )
        .unwrap();
        // The dead daemon's cleanup must not remove the new socket.
        b1.remove();
        assert!(p.exists());
        b2.remove();
        assert!(!p.exists());
    }

    #[test]
    fn groups_resolve_by_name_and_number() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-xyz").is_err());
    }
}
