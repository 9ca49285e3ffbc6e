//! `tierblk serve`: opens the tiers and the metadata store, opens every
//! volume and serves each on its own vhost-user socket, one connection at
//! a time; when a client disconnects the volume keeps its data and waits
//! for the next connection (QEMU reconnect).

use std::{
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::{
    blk::backend::BlkBackend,
    config::Config,
    epoch::Brain,
    meta::Store,
    predict::HeatMap,
    profile::{initial_heat_map, VmProfile},
    tier::TierSet,
    volume::Volume,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume '{volume}': cannot listen on {path}: {reason}")]
    Listen {
        volume: String,
        path: PathBuf,
        reason: String,
    },
    #[error("the config defines no [[volume]]: nothing to serve")]
    NoVolumes,
    #[error("cannot install signal handling: {0}")]
    Signals(std::io::Error),
    #[error("volume '{volume}': prediction_model '{model}': {source}")]
    Model {
        volume: String,
        model: String,
        source: crate::predict::Error,
    },
    #[error("volume '{volume}': domain_xml: {source}")]
    Profile {
        volume: String,
        source: crate::profile::Error,
    },
}

/// Options of `serve` beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Create missing state, socket and tier directories.
    pub create_dirs: bool,
}

fn create_dir(p: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(p).map_err(|source| Error::CreateDir {
        path: p.to_path_buf(),
        source,
    })
}

/// Everything `serve` opened: the tiers, the store, the volumes and the
/// brain (predictor and epoch loop) of each volume.
pub struct Opened {
    pub tiers: Arc<TierSet>,
    pub store: Arc<Store>,
    pub volumes: Vec<Arc<Volume>>,
    pub brains: Vec<Brain>,
}

/// Opens tiers, store and volumes as the config describes.
pub fn open(cfg: &Config, opts: &ServeOptions) -> crate::Result<Opened> {
    if opts.create_dirs {
        create_dir(&cfg.daemon.state_dir)?;
        for t in &cfg.tiers {
            if !t.path.exists() {
                create_dir(&t.path)?;
            }
        }
        for v in &cfg.volumes {
            if let Some(dir) = v.socket.parent() {
                create_dir(dir)?;
            }
        }
    }
    let tiers = Arc::new(TierSet::open(&cfg.tiers)?);
    let store = Arc::new(Store::open(&cfg.daemon.state_dir)?);
    for t in &cfg.tiers {
        store.put_tier(t)?;
    }
    let mut volumes = Vec::new();
    let mut brains = Vec::new();
    let epoch = Duration::from_secs_f64(cfg.daemon.epoch_secs);
    for meta in &cfg.volumes {
        // Load the model before touching the volume, so a bad model file
        // stops the daemon with a clear error.
        let predictor =
            crate::predict::load(&meta.prediction_model).map_err(|source| Error::Model {
                volume: meta.name.clone(),
                model: meta.prediction_model.clone(),
                source,
            })?;
        let profile = match &meta.domain_xml {
            Some(p) => Some(VmProfile::from_file(p).map_err(|source| Error::Profile {
                volume: meta.name.clone(),
                source,
            })?),
            None => None,
        };
        let v = Arc::new(Volume::open(meta.clone(), tiers.clone(), store.clone())?);
        let saved = match store.heatmap(v.name())? {
            Some(b) => match HeatMap::from_bytes(v.name(), &b) {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!("volume '{}': ignoring saved heat map: {e}", v.name());
                    None
                }
            },
            None => None,
        };
        let n = v.chunk_count() as usize;
        let seed = match (&saved, &profile) {
            (Some(h), _) if h.len() == n => "its saved heat map (warm restart)",
            (_, Some(_)) => "the VM profile's prior",
            _ => "a cold heat map",
        };
        info!(
            "volume '{}': predictor {}, starting from {seed}",
            v.name(),
            predictor.name()
        );
        let heat = initial_heat_map(profile.as_ref(), saved, n);
        for (c, &s) in heat.scores().iter().enumerate() {
            v.set_score(c as u32, s);
        }
        brains.push(Brain::new(
            v.clone(),
            predictor,
            epoch,
            cfg.daemon.migration_mibps,
        ));
        volumes.push(v);
    }
    Ok(Opened {
        tiers,
        store,
        volumes,
        brains,
    })
}

/// Runs the daemon until SIGINT or SIGTERM; flushes every volume on exit.
pub fn serve(cfg: &Config, opts: &ServeOptions) -> crate::Result<()> {
    if cfg.volumes.is_empty() {
        return Err(Error::NoVolumes.into());
    }
    // Block the stop signals before any thread starts, so that every thread
    // inherits the mask and only the main thread's sigwait receives them.
    let signals = block_stop_signals().map_err(Error::Signals)?;
    let mut opened = open(cfg, opts)?;
    let epoch = Duration::from_secs_f64(cfg.daemon.epoch_secs);
    for brain in opened.brains.drain(..) {
        crate::epoch::spawn(brain, epoch).expect("spawning a brain thread");
    }
    for v in &opened.volumes {
        let mut listener = listen(&v.metadata().socket).map_err(|e| Error::Listen {
            volume: v.name().to_string(),
            path: v.metadata().socket.clone(),
            reason: e.to_string(),
        })?;
        let v = v.clone();
        thread::Builder::new()
            .name(format!("vol-{}", v.name()))
            .spawn(move || serve_volume(&v, &mut listener))
            .expect("spawning a volume thread");
    }
    for v in &opened.volumes {
        info!(
            "volume '{}' ({} bytes, {} chunks of {} bytes, {} queues) on {}",
            v.name(),
            v.size(),
            v.chunk_count(),
            v.chunk_size(),
            v.metadata().num_queues,
            v.metadata().socket.display()
        );
    }
    let sig = wait_signal(&signals);
    info!("signal {sig}: flushing volumes and exiting");
    for v in &opened.volumes {
        if let Err(e) = v.flush() {
            error!("{e}");
        }
        let _ = std::fs::remove_file(&v.metadata().socket);
    }
    Ok(())
}

/// A listening socket at `path`, replacing whatever was there. The socket is
/// bound and listening under a temporary name first and then renamed into
/// place, so a client that sees the path (QEMU, libvirt, a test) never finds
/// a bound socket that is not listening yet (ECONNREFUSED).
fn listen(path: &Path) -> std::io::Result<Listener> {
    let tmp = path.with_file_name(format!(".tierblk-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let sock = UnixListener::bind(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Listener::from(sock))
}

/// Serves one volume forever: one vhost-user connection after another.
fn serve_volume(volume: &Arc<Volume>, listener: &mut Listener) {
    loop {
        if let Err(e) = serve_connection(volume, listener) {
            warn!("volume '{}': connection ended: {e}", volume.name());
        }
        // The guest is gone: make what it wrote durable before the next.
        if let Err(e) = volume.flush() {
            error!("{e}");
        }
        info!(
            "volume '{}': waiting for the next connection",
            volume.name()
        );
    }
}

fn serve_connection(volume: &Arc<Volume>, listener: &mut Listener) -> Result<(), String> {
    let backend = Arc::new(BlkBackend::new(volume.clone()).map_err(|e| e.to_string())?);
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(volume.name().to_string(), backend.clone(), mem)
        .map_err(|e| e.to_string())?;
    let ev = backend.completion_event() as u64;
    for (handler, fd) in daemon
        .get_epoll_handlers()
        .iter()
        .zip(backend.completion_fds())
    {
        handler
            .register_listener(fd, EventSet::IN, ev)
            .map_err(|e| format!("registering completion eventfd: {e}"))?;
    }
    daemon.start(listener).map_err(|e| e.to_string())?;
    info!("volume '{}': client connected", volume.name());
    let r = match daemon.wait() {
        // The front-end closing its socket is how a connection ends.
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::Disconnected)) => {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    info!("volume '{}': client disconnected", volume.name());
    r
}

fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    loop {
        // SAFETY: `set` is an initialised signal set and `sig` a live i32
        // that sigwait writes the received signal number to.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}
