//! Connection parameters: libpq's defaults and environment variables, and
//! the password file (`~/.pgpass`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Default Unix-socket directory of Debian's and most distributions' libpq
/// builds.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Connect timeout used when `PGCONNECT_TIMEOUT` is not set. (libpq waits
/// forever; a backup tool should not hang on an unreachable host.)
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether and how to use TLS, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server supports it (libpq's `allow` also maps here),
    /// without certificate verification; plain otherwise.
    #[default]
    Prefer,
    /// TLS, without certificate verification unless `sslrootcert` is set
    /// (then like [`SslMode::VerifyCa`], as libpq does).
    Require,
    /// TLS; the certificate chain must lead to a trusted root
    /// (`sslrootcert`, else the system roots); any host name.
    VerifyCa,
    /// Like [`SslMode::VerifyCa`] and the certificate must be for the host.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: expected disable, allow, prefer, require, \
                     verify-ca or verify-full"
                ))
            }
        })
    }
}

/// Where and as whom to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// Host name, IP address, or a Unix-socket directory when it starts
    /// with '/'.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// When `None`, the password file is consulted if the server asks for
    /// a password.
    pub password: Option<String>,
    /// The password file (`host:port:database:user:password` lines), read
    /// when `password` is `None` and the server asks for one.
    pub passfile: Option<PathBuf>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// PEM file of trusted root certificates; `None` = the system roots.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    /// Settings for the session, sent as the startup packet's `options`
    /// (libpq's `options`, `PGOPTIONS`): e.g. `-c gp_role=utility`, which
    /// Greenplum and Cloudberry segments need from a direct connection.
    /// Empty: none.
    pub options: String,
    /// For the whole connection set-up (connect, TLS, authentication);
    /// zero = no limit.
    pub connect_timeout: Duration,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnParams {
    /// libpq's defaults and environment: `PGHOST` (default:
    /// /var/run/postgresql if it exists, else localhost), `PGPORT` (5432),
    /// `PGUSER` (default: the OS user name), `PGPASSWORD`, `PGDATABASE`
    /// (default: the user), `PGSSLMODE` (prefer), `PGSSLROOTCERT` (default:
    /// ~/.postgresql/root.crt if it exists; `system` = the system roots),
    /// `PGCONNECT_TIMEOUT` (seconds; default 30, 0 = none), `PGAPPNAME`
    /// (default `cbdr`), `PGOPTIONS` (default none).
    ///
    /// `passfile` is `PGPASSFILE`, default ~/.pgpass; it is read at
    /// connect time when `password` is `None` and the server asks for one,
    /// matching database `replication` for physical replication
    /// connections, as libpq's replication clients do.
    ///
    /// Invalid values (a non-numeric `PGPORT`, an unknown `PGSSLMODE`) are
    /// logged and replaced by the defaults; [`ConnParams::try_from_env`]
    /// reports them instead.
    pub fn from_env() -> ConnParams {
        let (params, problems) = from_vars(&|k| env_var(k), &os_user_name(), home_dir());
        for p in problems {
            tracing::warn!("{p}; using the default");
        }
        params
    }

    /// [`ConnParams::from_env`] that fails on invalid environment values.
    pub fn try_from_env() -> Result<ConnParams, String> {
        let (params, problems) = from_vars(&|k| env_var(k), &os_user_name(), home_dir());
        match problems.into_iter().next() {
            Some(p) => Err(p),
            None => Ok(params),
        }
    }

    /// Whether `host` names a Unix-socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The Unix-socket path (`{host}/.s.PGSQL.{port}`), for socket hosts.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.is_unix_socket()
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// What the connection goes to, for messages: `host:port`,
    /// `[v6addr]:port` or the socket path.
    pub fn target(&self) -> String {
        match self.socket_path() {
            Some(path) => path.display().to_string(),
            None if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The password from `passfile` for these parameters and database
    /// `dbname`; `None` when there is no file, it has group/world access
    /// (ignored, as by libpq, with a warning) or no line matches.
    pub fn password_from_file(&self, dbname: &str) -> Option<String> {
        let contents = read_password_file(self.passfile.as_deref()?)?;
        let port = self.port.to_string();
        let mut hosts = vec![self.host.as_str()];
        if self.is_unix_socket() && self.host.trim_end_matches('/') == DEFAULT_SOCKET_DIR {
            hosts.push("localhost");
        }
        hosts
            .into_iter()
            .find_map(|host| pgpass_lookup(&contents, host, &port, dbname, &self.user))
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// [`ConnParams::from_env`] on an arbitrary variable lookup; returns the
/// parameters and the invalid values found.
pub(crate) fn from_vars(
    get: &dyn Fn(&str) -> Option<String>,
    os_user: &str,
    home: Option<PathBuf>,
) -> (ConnParams, Vec<String>) {
    let mut problems = Vec::new();
    let host = match get("PGHOST") {
        Some(h) => match h.split_once(',') {
            Some((first, _)) => {
                problems.push(format!(
                    "PGHOST {h:?} lists several hosts; only the first, {first:?}, is used"
                ));
                first.to_owned()
            }
            None => h,
        },
        None if Path::new(DEFAULT_SOCKET_DIR).is_dir() => DEFAULT_SOCKET_DIR.to_owned(),
        None => "localhost".to_owned(),
    };
    let port = match get("PGPORT") {
        Some(p) => match p.trim().parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                problems.push(format!("invalid PGPORT {p:?}"));
                5432
            }
        },
        None => 5432,
    };
    let user = get("PGUSER").unwrap_or_else(|| os_user.to_owned());
    let dbname = get("PGDATABASE").unwrap_or_else(|| user.clone());
    let sslmode = match get("PGSSLMODE") {
        Some(m) => m.parse().unwrap_or_else(|e: String| {
            problems.push(format!("PGSSLMODE: {e}"));
            SslMode::Prefer
        }),
        None => SslMode::Prefer,
    };
    let sslrootcert = match get("PGSSLROOTCERT") {
        Some(s) if s == "system" => None,
        Some(s) => Some(PathBuf::from(s)),
        None => home
            .as_ref()
            .map(|h| h.join(".postgresql/root.crt"))
            .filter(|p| p.is_file()),
    };
    let connect_timeout = match get("PGCONNECT_TIMEOUT") {
        Some(t) => match t.trim().parse::<i64>() {
            Ok(s) if s <= 0 => Duration::ZERO,
            // libpq's minimum.
            Ok(s) => Duration::from_secs(s.max(2) as u64),
            Err(_) => {
                problems.push(format!("invalid PGCONNECT_TIMEOUT {t:?}"));
                DEFAULT_CONNECT_TIMEOUT
            }
        },
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    let passfile = get("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
    let params = ConnParams {
        host,
        port,
        user,
        password: get("PGPASSWORD"),
        passfile,
        dbname,
        sslmode,
        sslrootcert,
        application_name: get("PGAPPNAME").unwrap_or_else(|| "cbdr".to_owned()),
        options: get("PGOPTIONS").unwrap_or_default(),
        connect_timeout,
    };
    (params, problems)
}

/// The password file's contents, unless missing or too open.
fn read_password_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file {} is not a plain file: ignored",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access: ignored (permissions should be \
             u=rw (0600) or less)",
            path.display()
        );
        return None;
    }
    match std::fs::read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => {
            tracing::warn!("could not read password file {}: {e}", path.display());
            None
        }
    }
}

/// The password of the first line of a password file (`host:port:db:user:
/// password`, `*` matching anything, `\` escaping `:` and `\`, `#`
/// comments) that matches.
pub fn pgpass_lookup(
    contents: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    contents
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let mut rest = line;
            for want in [host, port, dbname, user] {
                rest = match_field(rest, want)?;
            }
            Some(unescape(rest))
        })
}

/// If the field at the start of `line` matches `want`, the rest of the
/// line after the field's ':'.
fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = want.chars();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        let c = match c {
            ':' => return want.next().is_none().then(|| &line[i + 1..]),
            '\\' => chars.next()?.1,
            c => c,
        };
        if want.next() != Some(c) {
            return None;
        }
    }
    // A line that ends before the password field matches nothing.
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The name of the OS user this process runs as (as libpq's default user).
pub fn os_user_name() -> String {
    passwd_entry()
        .map(|(name, _)| name)
        .or_else(|| env_var("USER"))
        .unwrap_or_else(|| "postgres".to_owned())
}

/// `$HOME`, else the home directory of the OS user.
fn home_dir() -> Option<PathBuf> {
    env_var("HOME")
        .map(PathBuf::from)
        .or_else(|| passwd_entry().map(|(_, home)| home))
}

/// Name and home directory of the effective user, from the password
/// database.
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the stated sizes; on success the
    // strings in `pwd` point into `buf`, which outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: non-null NUL-terminated strings inside `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    let home = if pwd.pw_dir.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: as above.
        PathBuf::from(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes(),
        ))
    };
    Some((name, home))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn pgpass_first_matching_line_wins() {
        let file = "\
# comment
db.example:5432:app:alice:first
*:*:replication:rep:reppw
*:5433:*:alice:on-5433
*:*:*:alice:fallback
";
        let look = |h, p, d, u| pgpass_lookup(file, h, p, d, u);
        assert_eq!(
            look("db.example", "5432", "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            look("other", "5432", "app", "alice").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            look("other", "5433", "app", "alice").as_deref(),
            Some("on-5433")
        );
        assert_eq!(
            look("h", "1", "replication", "rep").as_deref(),
            Some("reppw")
        );
        assert_eq!(look("h", "1", "postgres", "rep"), None);
        assert_eq!(look("h", "1", "app", "bob"), None);
    }

    #[test]
    fn pgpass_escapes_and_prefixes() {
        let file = "\
/var/run/postgresql:5432:*:u:sock\\:et\\\\pw
h\\:1:5432:*:u:colon-host
a\\*:5432:*:u:literal-star
hostlong:5432:*:u:long
*:*:*:short
";
        let look = |h| pgpass_lookup(file, h, "5432", "db", "u");
        assert_eq!(look("/var/run/postgresql").as_deref(), Some("sock:et\\pw"));
        assert_eq!(look("h:1").as_deref(), Some("colon-host"));
        assert_eq!(look("a*").as_deref(), Some("literal-star"));
        // "a*" is not a wildcard for "ab"; a field must match entirely.
        assert_eq!(look("ab"), None);
        assert_eq!(look("host"), None);
        assert_eq!(look("hostlongest"), None);
        // Password may contain ':' and may be empty; CRLF endings.
        let file = "*:*:*:u:pa:ss\r\n*:*:*:v:\n";
        assert_eq!(
            pgpass_lookup(file, "h", "1", "d", "u").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(pgpass_lookup(file, "h", "1", "d", "v").as_deref(), Some(""));
    }

    fn vars(pairs: &[(&str, &str)]) -> (ConnParams, Vec<String>) {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(
            &|k| map.get(k).cloned(),
            "osuser",
            Some(PathBuf::from("/home/osuser")),
        )
    }

    #[test]
    fn env_defaults_and_overrides() {
        let (p, problems) = vars(&[]);
        assert!(problems.is_empty());
        assert_eq!(p.port, 5432);
        assert_eq!(p.user, "osuser");
        assert_eq!(p.dbname, "osuser");
        assert_eq!(p.password, None);
        assert_eq!(p.passfile, Some(PathBuf::from("/home/osuser/.pgpass")));
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.sslrootcert, None);
        assert_eq!(p.application_name, "cbdr");
        assert_eq!(p.options, "");
        assert_eq!(p.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let expect_host = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
            DEFAULT_SOCKET_DIR
        } else {
            "localhost"
        };
        assert_eq!(p.host, expect_host);

        let (p, problems) = vars(&[
            ("PGHOST", "db.example"),
            ("PGPORT", "6543"),
            ("PGUSER", "alice"),
            ("PGPASSWORD", "s3cret"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/etc/ca.pem"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGAPPNAME", "app"),
            ("PGOPTIONS", "-c gp_role=utility"),
            ("PGPASSFILE", "/etc/pgpass"),
        ]);
        assert!(problems.is_empty());
        assert_eq!(p.host, "db.example");
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "alice");
        assert_eq!(p.dbname, "alice");
        assert_eq!(p.password.as_deref(), Some("s3cret"));
        assert_eq!(p.passfile, Some(PathBuf::from("/etc/pgpass")));
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.application_name, "app");
        assert_eq!(p.options, "-c gp_role=utility");
        assert_eq!(p.target(), "db.example:6543");
        // The password never shows in Debug.
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<hidden>"), "{dbg}");

        let (p, problems) = vars(&[
            ("PGPORT", "nope"),
            ("PGSSLMODE", "verify_full"),
            ("PGCONNECT_TIMEOUT", "0"),
            ("PGSSLROOTCERT", "system"),
            ("PGHOST", "/tmp/sock"),
            ("PGDATABASE", "db"),
        ]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(p.port, 5432);
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.connect_timeout, Duration::ZERO);
        assert_eq!(p.sslrootcert, None);
        assert_eq!(p.dbname, "db");
        assert_eq!(
            p.socket_path(),
            Some(PathBuf::from("/tmp/sock/.s.PGSQL.5432"))
        );
        assert_eq!(p.target(), "/tmp/sock/.s.PGSQL.5432");
    }

    #[test]
    fn sslmode_names() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(m.as_str().parse::<SslMode>(), Ok(m));
        }
        assert_eq!("allow".parse::<SslMode>(), Ok(SslMode::Prefer));
        assert!("on".parse::<SslMode>().is_err());
    }
}
