//! Reloading the limits when their files change.
//!
//! The files are read again every `interval` (and at once on SIGHUP) and compared with what is
//! in force. That sees every way a file is replaced: an atomic rename (write a temporary file
//! in the same directory, then `mv`), Kubernetes' swap of a ConfigMap's `..data` symlink, or an
//! edit in place (a half-written file fails to parse, is logged, and is read again at the next
//! tick). A file that does not parse leaves the previous limits in force.

use crate::grpc::State;
use crate::limits::{read_sources, Limits};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

pub async fn watch(
    path: PathBuf,
    state: Arc<State>,
    interval: Duration,
    mut in_force: Vec<(PathBuf, String)>,
) {
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut refused: Option<String> = None;
    loop {
        match hangup.as_mut() {
            Some(hangup) => {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = hangup.recv() => tracing::info!("SIGHUP: reading the limits again"),
                }
            }
            None => tokio::time::sleep(interval).await,
        }
        let outcome = reload(&path, &state, &in_force);
        match outcome {
            Reload::Unchanged => {}
            Reload::Replaced(sources, rules) => {
                tracing::info!(config = %path.display(), rules, "limits reloaded");
                in_force = sources;
                refused = None;
            }
            Reload::Refused(error) => {
                state.metrics.reloaded(false, None);
                if refused.as_deref() != Some(error.as_str()) {
                    tracing::error!(config = %path.display(), %error, "new limits refused; the previous limits stay in force");
                }
                refused = Some(error);
            }
        }
    }
}

enum Reload {
    Unchanged,
    Replaced(Vec<(PathBuf, String)>, usize),
    Refused(String),
}

fn reload(path: &Path, state: &State, in_force: &[(PathBuf, String)]) -> Reload {
    let sources = match read_sources(path) {
        Ok(sources) => sources,
        Err(error) => return Reload::Refused(error.to_string()),
    };
    if sources == in_force {
        return Reload::Unchanged;
    }
    let limits = match Limits::from_sources(&sources) {
        Ok(limits) => limits,
        Err(error) => return Reload::Refused(error.to_string()),
    };
    let rules = limits.rules().len();
    match state.replace(limits) {
        Ok(()) => Reload::Replaced(sources, rules),
        Err(error) => Reload::Refused(error),
    }
}
