//! `tierblk serve`: opens the metadata store and the tiers, audits every
//! stored chunk map, opens every configured volume and serves each on its
//! own vhost-user socket, one connection at a time; when a client
//! disconnects the volume keeps its data and waits for the next connection
//! (QEMU reconnect).
//!
//! The store owns what exists (DESIGN decision 8): a stored volume the
//! config no longer names is kept and reported, never freed or served, and
//! is removed only by `tierblk volume delete`.

pub mod audit;
mod signals;
pub mod socket;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use log::{error, info, warn};
use vhost::vhost_user::Listener;

use crate::{
    blk::{backend::BlkBackend, handler::Handler},
    config::Config,
    epoch::Brain,
    meta::Store,
    migrate::Budget,
    predict::{HeatMap, Predictor},
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
    #[error("no volume can be served safely (see the errors above)")]
    NothingServable,
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
    #[error("daemon.socket_group = {group}: {reason}")]
    SocketGroup { group: String, reason: String },
    #[error("volume '{volume}': socket directory {path} does not exist (use --create-dirs)")]
    SocketDir { volume: String, path: PathBuf },
    #[error("volume '{volume}': socket {path} is served by another process (a second tierblk?)")]
    SocketBusy { volume: String, path: PathBuf },
    #[error("volume '{name}' is still in the config; remove its [[volume]] section first")]
    StillConfigured { name: String },
    #[error("the metadata store has no volume '{name}'")]
    NoSuchVolume { name: String },
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
    /// Who may connect to the volume sockets.
    pub access: socket::Access,
}

/// What each configured volume needs besides its data, loaded before any
/// file is created so that a bad model or profile stops nothing half-way.
struct Prepared {
    predictor: Box<dyn Predictor>,
    profile: Option<VmProfile>,
}

/// Checks everything about the config that needs no store and no tier:
/// socket access, models, VM profiles and socket directories.
fn preflight(cfg: &Config, opts: &ServeOptions) -> crate::Result<(socket::Access, Vec<Prepared>)> {
    let access = socket::Access {
        mode: cfg.daemon.socket_mode.0,
        gid: match &cfg.daemon.socket_group {
            Some(g) => Some(socket::group_id(g).map_err(|reason| Error::SocketGroup {
                group: g.clone(),
                reason,
            })?),
            None => None,
        },
    };
    let mut out = Vec::new();
    for meta in &cfg.volumes {
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
        if let Some(dir) = meta.socket.parent() {
            if !opts.create_dirs && !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(Error::SocketDir {
                    volume: meta.name.clone(),
                    path: dir.to_path_buf(),
                }
                .into());
            }
        }
        if meta.socket.exists() && socket::served_by_someone(&meta.socket) {
            return Err(Error::SocketBusy {
                volume: meta.name.clone(),
                path: meta.socket.clone(),
            }
            .into());
        }
        out.push(Prepared { predictor, profile });
    }
    Ok((access, out))
}

/// Runs every check `serve` runs, except binding sockets, without creating
/// or changing anything: the config, models and profiles, and (when the
/// state directory exists) the store and tier devices against each other.
pub fn check(cfg: &Config) -> crate::Result<Vec<String>> {
    preflight(cfg, &ServeOptions { create_dirs: true })?;
    let mut notes = Vec::new();
    let store_file = cfg.daemon.state_dir.join(crate::meta::STORE_FILE);
    if !store_file.exists() {
        notes.push(format!(
            "no metadata store at {} yet: serve creates it",
            store_file.display()
        ));
        crate::tier::check_against(&cfg.tiers, None)?;
        return Ok(notes);
    }
    let store = match Store::open(&cfg.daemon.state_dir) {
        Ok(s) => s,
        Err(crate::meta::Error::Busy { path }) => {
            notes.push(format!(
                "metadata store {} is in use by a running daemon: store and tier checks skipped",
                path.display()
            ));
            return Ok(notes);
        }
        Err(e) => return Err(e.into()),
    };
    crate::tier::check_against(&cfg.tiers, Some(&store))?;
    for v in &cfg.volumes {
        if let Some(stored) = store.volume(&v.name)? {
            crate::volume::check_compatible(&stored, v)?;
        }
    }
    for name in store.volume_names()? {
        if !cfg.volumes.iter().any(|v| v.name == name) {
            notes.push(format!(
                "volume '{name}' is in the store but not in the config: it is kept and not served"
            ));
        }
    }
    Ok(notes)
}

/// Opens store, tiers and volumes as the config describes.
pub fn open(cfg: &Config, opts: &ServeOptions) -> crate::Result<Opened> {
    let (access, prepared) = preflight(cfg, opts)?;
    if opts.create_dirs {
        for t in &cfg.tiers {
            if !t.path.exists() {
                create_dir(&t.path)?;
            }
        }
        for v in &cfg.volumes {
            if let Some(dir) = v.socket.parent() {
                if !dir.exists() {
                    create_dir(dir)?;
                    // Searchable by QEMU's user (socket_group): the socket's
                    // own mode is what keeps others out.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(
                        |source| Error::CreateDir {
                            path: dir.to_path_buf(),
                            source,
                        },
                    )?;
                }
            }
        }
    }
    let store = Arc::new(Store::open(&cfg.daemon.state_dir)?);
    let tiers = Arc::new(TierSet::open(&cfg.tiers, &store)?);
    for t in tiers.iter() {
        if let Some(f) = &t.definition().fault {
            warn!(
                "tier '{}': TEST-ONLY fault injection is on ({f:?}); never use this in production",
                t.name()
            );
        }
    }
    let found = audit::audit(&store, &tiers)?;
    let mut volumes = Vec::new();
    let mut brains = Vec::new();
    let mut unserved = Vec::new();
    let epoch = Duration::from_secs_f64(cfg.daemon.epoch_secs);
    // One migration budget for the whole daemon, shared by the volumes
    // migrating at the time.
    let budget = Arc::new(
        Budget::new(cfg.daemon.migration_mibps, cfg.volumes.len())
            .with_yield(cfg.daemon.migration_yield),
    );
    if cfg.daemon.migration_yield && cfg.daemon.migration_mibps == 0.0 {
        warn!(
            "daemon.migration_yield = true has no effect with daemon.migration_mibps = 0 \
             (unlimited): migration does not yield to guests"
        );
    }
    for (slot, (meta, prep)) in cfg.volumes.iter().zip(prepared).enumerate() {
        if let Some(why) = found.refused.get(&meta.name) {
            error!("volume '{}': not served: {why}", meta.name);
            unserved.push(meta.name.clone());
            continue;
        }
        let v = Arc::new(Volume::open(meta.clone(), tiers.clone(), store.clone())?);
        brains.push(
            start_brain(
                &v,
                &store,
                prep,
                epoch,
                cfg.daemon.migration_mibps,
                cfg.placement,
            )?
            .with_budget(Arc::clone(&budget), slot),
        );
        volumes.push(v);
    }
    for name in store.volume_names()? {
        if cfg.volumes.iter().any(|v| v.name == name) {
            continue;
        }
        let why = match found.refused.get(&name) {
            Some(why) => format!("not in the config, and {why}"),
            None => "not in the config".to_string(),
        };
        warn!(
            "volume '{name}' is in the metadata store but {why}: its data is kept and not served; `tierblk volume delete` removes it"
        );
        unserved.push(name);
    }
    for name in &unserved {
        audit::claim_unserved(&store, &tiers, name)?;
    }
    Ok(Opened {
        tiers,
        store,
        volumes,
        brains,
        access,
    })
}

/// Seeds a volume's heat map (saved map, else VM profile, else cold) and
/// makes its brain.
fn start_brain(
    v: &Arc<Volume>,
    store: &Store,
    prep: Prepared,
    epoch: Duration,
    migration_mibps: f64,
    placement: crate::config::PlacementSettings,
) -> crate::Result<Brain> {
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
    let seed = match (&saved, &prep.profile) {
        (Some(h), _) if h.len() == n => "its saved heat map (warm restart)",
        (_, Some(_)) => "the VM profile's prior",
        _ => "a cold heat map",
    };
    info!(
        "volume '{}': predictor {}, starting from {seed}",
        v.name(),
        prep.predictor.name()
    );
    let heat = initial_heat_map(prep.profile.as_ref(), saved, n);
    for (c, &s) in heat.scores().iter().enumerate() {
        v.set_score(c as u32, s);
    }
    Ok(Brain::new(
        v.clone(),
        prep.predictor,
        epoch,
        migration_mibps,
        placement,
    ))
}

/// `tierblk volume list`: (name, size, named by the config) of every
/// stored volume.
pub fn list_volumes(cfg: &Config) -> crate::Result<Vec<(String, crate::config::ByteSize, bool)>> {
    let store = Store::open(&cfg.daemon.state_dir)?;
    Ok(store
        .volumes()?
        .into_iter()
        .map(|v| {
            let served = cfg.volumes.iter().any(|c| c.name == v.name);
            (v.name, v.size, served)
        })
        .collect())
}

/// `tierblk volume delete`: removes a stored volume that the config no
/// longer names, with its chunk map and heat map, in one durable
/// transaction; its extents are free from the next start on.
pub fn delete_volume(cfg: &Config, name: &str) -> crate::Result<()> {
    if cfg.volumes.iter().any(|v| v.name == name) {
        return Err(Error::StillConfigured {
            name: name.to_string(),
        }
        .into());
    }
    let store = Store::open(&cfg.daemon.state_dir)?;
    if store.volume(name)?.is_none() {
        return Err(Error::NoSuchVolume {
            name: name.to_string(),
        }
        .into());
    }
    store.delete_volume(name)?;
    Ok(())
}

/// Runs the daemon until SIGINT or SIGTERM (SIGHUP is logged and ignored);
/// flushes every volume and removes its socket on every way out.
pub fn serve(cfg: &Config, opts: &ServeOptions) -> crate::Result<()> {
    if cfg.volumes.is_empty() {
        return Err(Error::NoVolumes.into());
    }
    // Block the signals before any thread starts, so that every thread
    // inherits the mask and only the main thread's sigwait receives them.
    let signals = signals::block().map_err(Error::Signals)?;
    // Whatever the umask, nothing this daemon creates is open to others
    // unless the config says so (socket_mode / socket_group).
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    let mut opened = open(cfg, opts)?;
    if opened.volumes.is_empty() {
        return Err(Error::NothingServable.into());
    }
    let epoch = Duration::from_secs_f64(cfg.daemon.epoch_secs);
    for brain in opened.brains.drain(..) {
        crate::epoch::spawn(brain, epoch).expect("spawning a brain thread");
    }
    let mut bound = Vec::new();
    for v in &opened.volumes {
        match listen_and_serve(v, opened.access) {
            Ok(b) => bound.push(b),
            Err(e) => {
                shut_down(&opened.volumes, &bound);
                return Err(e);
            }
        }
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
    let sig = signals::wait_for_stop(&signals);
    info!("signal {sig}: flushing volumes and exiting");
    shut_down(&opened.volumes, &bound);
    Ok(())
}

/// Binds `v`'s socket and serves it on a thread of its own, one
/// vhost-user connection after another, for as long as the process runs.
pub fn listen_and_serve(v: &Arc<Volume>, access: socket::Access) -> crate::Result<socket::Bound> {
    let failed = |reason: String| Error::Listen {
        volume: v.name().to_string(),
        path: v.metadata().socket.clone(),
        reason,
    };
    let (mut listener, bound) =
        socket::listen(&v.metadata().socket, access).map_err(|e| failed(e.to_string()))?;
    let served = v.clone();
    thread::Builder::new()
        .name(format!("vol-{}", v.name()))
        .spawn(move || serve_volume(&served, &mut listener))
        .map_err(|e| failed(format!("spawning its thread: {e}")))?;
    Ok(bound)
}

/// Flushes every volume, makes the saved heat maps durable and removes the
/// sockets this daemon made.
fn shut_down(volumes: &[Arc<Volume>], bound: &[socket::Bound]) {
    for v in volumes {
        if let Err(e) = v.flush() {
            error!("{e}");
        }
    }
    if let Some(v) = volumes.first() {
        if let Err(e) = v.store().sync() {
            error!("{e}");
        }
    }
    for b in bound {
        b.remove();
    }
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
    use vhost::vhost_user::{BackendListener, Error};
    let backend = Arc::new(BlkBackend::new(volume.clone()).map_err(|e| e.to_string())?);
    let handler = Arc::new(Mutex::new(
        Handler::new(backend).map_err(|e| e.to_string())?,
    ));
    let mut conn = {
        let mut l = BackendListener::new(listener, handler).map_err(|e| e.to_string())?;
        loop {
            match l.accept() {
                Ok(Some(c)) => break c,
                Ok(None) => continue,
                Err(e) => return Err(format!("accepting a connection: {e}")),
            }
        }
    };
    info!("volume '{}': client connected", volume.name());
    let r = loop {
        match conn.handle_request() {
            Ok(()) => {}
            // The front-end closing its socket is how a connection ends.
            Err(Error::Disconnected | Error::PartialMessage | Error::SocketBroken(_)) => {
                break Ok(())
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    // Dropping the connection drops the handler: queue threads stop and
    // requests in flight complete before the workers go.
    drop(conn);
    info!("volume '{}': client disconnected", volume.name());
    r
}
