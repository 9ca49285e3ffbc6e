//! Signals of the daemon: SIGINT and SIGTERM stop it (after flushing);
//! SIGHUP, which by default would kill it on the spot with nothing flushed,
//! is logged and ignored (config changes need a restart).

use log::warn;

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every
/// thread it starts afterwards), so only `wait_for_stop` receives them.
pub fn block() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// Waits for SIGINT or SIGTERM and returns it; SIGHUP is logged and the
/// wait goes on.
pub fn wait_for_stop(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a live i32
        // that sigwait writes the received signal number to.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGHUP {
            warn!("SIGHUP: nothing is reloaded live (restart the daemon to apply config changes); ignored");
            continue;
        }
        return sig;
    }
}
