//! Test-only kill points.
//!
//! `fault::point("name")` marks a place where a test may kill cbdr. Built
//! without the `fault-injection` feature (every release build) it is an
//! empty inline function. With the feature, `CBDR_FAULT=name:N` makes the
//! N-th hit of point `name` in the process kill the process with SIGKILL
//! (no destructor, no flush, no clean-up: what a crash or the OOM killer
//! does). `CBDR_FAULT=name` is `name:1`. Several points may be given,
//! comma-separated. Before dying the process writes one line to stderr
//! (`cbdr fault injection: killed at point NAME (hit N)`) so that a test
//! can tell the kill it asked for from a failure of another kind.
//!
//! The points:
//! - `fs-put-chunk`: the fs repository wrote another chunk of an object to
//!   its temp file (not yet renamed into place).
//! - `s3-put-single`: before a single PutObject is sent.
//! - `s3-put-part`: another part of a multipart upload landed; the upload
//!   is not completed.
//! - `backup-part`: a base backup part's encoder took another 1 MiB batch
//!   (the part is neither empty nor complete). An agent running a backup
//!   job hits it too: set `CBDR_FAULT` in the agent's environment.
//! - `backup-record`: every part and the manifest of a base backup are
//!   stored and its WAL is archived; its record is not written yet.
//! - `restore-unpack`: a restore has unpacked another file into the target.
//! - `gprestore-table`: a logical restore sent another piece (1 MiB or
//!   less) of a table's rows to the server; the COPY is not finished.

/// A kill point (see the module documentation).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// A kill point (see the module documentation).
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    static PLAN: OnceLock<HashMap<String, u64>> = OnceLock::new();
    static HITS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let plan = PLAN.get_or_init(|| parse(&std::env::var("CBDR_FAULT").unwrap_or_default()));
    let Some(&at) = plan.get(name) else {
        return;
    };
    let hit = {
        let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
        let n = hits
            .get_or_insert_with(HashMap::new)
            .entry(name.to_string())
            .or_insert(0);
        *n += 1;
        *n
    };
    if hit == at {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "cbdr fault injection: killed at point {name} (hit {hit})"
        );
        // SAFETY: kill and getpid have no preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// `name:N,name2:M` (N defaults to 1; malformed entries are ignored).
#[cfg(any(feature = "fault-injection", test))]
fn parse(spec: &str) -> std::collections::HashMap<String, u64> {
    spec.split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (name, n) = match item.split_once(':') {
                Some((name, n)) => (name, n.trim().parse().ok()?),
                None => (item, 1),
            };
            (!name.is_empty() && n > 0).then(|| (name.to_string(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn plans_are_parsed() {
        let p = super::parse("backup-part:3, restore-unpack,bad:x,zero:0,:2");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p["backup-part"], 3);
        assert_eq!(p["restore-unpack"], 1);
        assert!(super::parse("").is_empty());
    }
}
