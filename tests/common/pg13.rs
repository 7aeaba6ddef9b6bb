//! PostgreSQL 13 from Debian 11's packages, unpacked by
//! `scripts/fetch-pg13.sh` (which `.ci/run` runs) into
//! `$CBDR_PG13_ROOT` (default /var/cache/cbdr-test/pg13).

use std::path::PathBuf;
use std::process::Command;

use super::pg::{use_install, PgInstall};

/// The unpacked PostgreSQL 13, or why it cannot be used.
pub fn install() -> Result<PgInstall, String> {
    let root = std::env::var_os("CBDR_PG13_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cbdr-test/pg13"));
    let bin = root.join("usr/lib/postgresql/13/bin");
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .map_err(|e| {
            format!(
                "{}: {e} (run scripts/fetch-pg13.sh, as .ci/run does)",
                bin.display()
            )
        })?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.contains(" 13.") {
        return Err(format!(
            "{} --version: {version}{} (run scripts/fetch-pg13.sh)",
            bin.join("postgres").display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PgInstall {
        bin,
        lib: Some(lib),
    })
}

/// Makes this test binary use PostgreSQL 13; `false` (with one line on
/// stderr saying why) when it is not there.
pub fn use_pg13() -> bool {
    match install() {
        Ok(i) => {
            use_install(i);
            true
        }
        Err(why) => {
            eprintln!("PostgreSQL 13 tests skipped: {why}");
            false
        }
    }
}
