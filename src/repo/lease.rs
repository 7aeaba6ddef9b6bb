//! Leases: a restore records what it uses (`leases/{ID}.json`: the
//! backup, the restore point, who, until when) before it reads anything,
//! and removes the lease when it is done. `delete` leaves what a live
//! lease covers alone (and refuses to delete it by name); a lease whose
//! holder died stops counting at its expiry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::retention::Protected;
use super::{layout, Repo};
use crate::error::Result;

/// How long a restore's lease lasts (a restore that takes longer is no
/// longer protected from a concurrent delete after that).
pub const RESTORE_LEASE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it, for messages ("restore on HOST (pid N)").
    pub holder: String,
    pub taken: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub content_id: i32,
    pub backup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
}

/// A lease taken; [`Held::release`] removes it.
#[derive(Debug)]
pub struct Held {
    key: String,
}

impl Held {
    pub async fn release(self, repo: &Repo) {
        if let Err(e) = repo.storage.delete(&self.key).await {
            tracing::warn!(
                "could not remove the lease {} (it expires by itself): {e}",
                self.key
            );
        }
    }
}

/// Takes a lease on `backup` (and `restore_point`) of `content_id`.
pub async fn take(
    repo: &Repo,
    content_id: i32,
    backup: &str,
    restore_point: Option<&str>,
    ttl: Duration,
) -> Result<Held> {
    let holder = format!("restore on {} (pid {})", hostname(), std::process::id());
    let id = super::catalog::new_backup_name("lease");
    hold(repo, &id, holder, content_id, backup, restore_point, ttl).await
}

/// Takes (or renews: same `id`) the lease `leases/{id}.json`.
pub async fn hold(
    repo: &Repo,
    id: &str,
    holder: String,
    content_id: i32,
    backup: &str,
    restore_point: Option<&str>,
    ttl: Duration,
) -> Result<Held> {
    let now = Utc::now();
    let lease = Lease {
        holder,
        taken: now,
        expires: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1)),
        content_id,
        backup: backup.to_string(),
        restore_point: restore_point.map(str::to_string),
    };
    let key = layout::lease_key(id);
    repo.put_json(&key, &lease).await?;
    Ok(Held { key })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

/// Every live lease at `now` (expired and unreadable ones are skipped;
/// an unreadable one is logged).
pub async fn live(repo: &Repo, now: DateTime<Utc>) -> Result<Vec<Lease>> {
    let mut out = Vec::new();
    for o in repo.storage.list(layout::LEASES_PREFIX).await? {
        match repo.get_json::<Lease>(&o.key).await {
            Ok(l) if l.expires > now => out.push(l),
            Ok(_) => {}
            Err(e) => tracing::warn!("skipping the unreadable lease {}: {e}", o.key),
        }
    }
    Ok(out)
}

/// What the live leases protect.
pub fn protected(leases: &[Lease]) -> Protected {
    let mut p = Protected::default();
    for l in leases {
        let who = format!(
            "{} until {}",
            l.holder,
            l.expires.format("%Y-%m-%d %H:%M:%S UTC")
        );
        p.backups
            .insert((l.content_id, l.backup.clone()), who.clone());
        if let Some(rp) = &l.restore_point {
            p.points.insert((l.content_id, rp.clone()), who);
        }
    }
    p
}
