//! The relay's data directory: identity, TLS certificate, storage key, configuration and
//! database, with the permissions each needs.
//!
//! ```text
//! DIR/               0700
//!   relay.key        0600  Noise static secret (the relay's identity), base64url
//!   storage.key      0600  key that encrypts and indexes the database, base64url
//!   tls.crt          0644  self-signed certificate (DER); not an identity
//!   tls.key          0600  its private key (PKCS#8 DER)
//!   config.toml      0600  configuration (may hold create_password)
//!   queues.redb      0600  the store
//! ```
//!
//! Nothing here is ever silently replaced: `init` refuses an existing identity without
//! `--force`, and a missing or unreadable file is an error that names it and the fix.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sotto_protocol::RelayStaticKey;
use sotto_protocol::address::{Host, RelayAddress};

use crate::config::{CONFIG_FILE, Config};
use crate::store::StorageKey;

/// Relay identity file.
pub const RELAY_KEY_FILE: &str = "relay.key";
/// Storage key file.
pub const STORAGE_KEY_FILE: &str = "storage.key";
/// TLS certificate file.
pub const TLS_CERT_FILE: &str = "tls.crt";
/// TLS private key file.
pub const TLS_KEY_FILE: &str = "tls.key";
/// Database file.
pub const DB_FILE: &str = "queues.redb";
/// The address the relay last served, as `run` printed it (written at every start).
pub const SERVED_ADDRESS_FILE: &str = "served-address";

/// The default data directory: `SOTTO_RELAY_DATA`, else `$XDG_DATA_HOME/sotto-relay`
/// (`~/.local/share/sotto-relay`).
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SOTTO_RELAY_DATA") {
        return PathBuf::from(d);
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("sotto-relay")
}

/// Whether `dir` holds a relay identity.
pub fn has_identity(dir: &Path) -> bool {
    dir.join(RELAY_KEY_FILE).exists()
}

/// What `init` needs to know.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Public host for the address.
    pub host: Option<String>,
    /// Listen address.
    pub listen: Option<String>,
    /// Replace an existing identity.
    pub force: bool,
}

/// Creates the data directory with a new identity, TLS certificate, storage key, config file
/// and an empty database.
///
/// # Errors
/// An existing identity without `force`, or any file that cannot be written.
pub fn init(dir: &Path, opts: &InitOptions) -> anyhow::Result<()> {
    if has_identity(dir) && !opts.force {
        bail!(
            "{} already holds a relay identity ({}); refusing to replace it. \
             Use --force to create a new identity (clients that know the old address will refuse the new one, \
             and the existing queues become unreadable)",
            dir.display(),
            dir.join(RELAY_KEY_FILE).display()
        );
    }
    if !opts.force {
        // A data directory with a store or its key but no relay.key has lost a file: making
        // a new identity here would replace storage.key and leave every stored message
        // unreadable. Only an operator who means it (`--force`, which moves the old
        // database aside) may start over.
        for f in [STORAGE_KEY_FILE, DB_FILE] {
            let p = dir.join(f);
            if p.exists() {
                bail!(
                    "{} is missing but {} exists: the data directory is incomplete. Restore {} \
                     from your backup; the relay will not start over with an empty store \
                     (only `sotto-relay init --force` creates a new identity and moves the old \
                     database aside)",
                    dir.join(RELAY_KEY_FILE).display(),
                    p.display(),
                    RELAY_KEY_FILE,
                );
            }
        }
    }
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set permissions on {}", dir.display()))?;

    let mut rng = rand::rngs::OsRng;
    let key = RelayStaticKey::generate(&mut rng);
    let storage = StorageKey::generate(&mut rng);
    // An existing config.toml is the operator's (it may hold create_password and every
    // tuning): a new identity keeps it, rewritten only to apply --host/--listen.
    let config_path = dir.join(CONFIG_FILE);
    let keep_config = config_path.exists();
    let mut config = if keep_config {
        Config::load(dir, |_| None, &crate::config::Overrides::default()).with_context(|| {
            format!(
                "{} exists but cannot be read as the relay's configuration: fix it or move it aside",
                config_path.display()
            )
        })?
    } else {
        Config::default()
    };
    let rewrite_config = !keep_config || opts.host.is_some() || opts.listen.is_some();
    if let Some(h) = &opts.host {
        config.host = h.clone();
    }
    if let Some(l) = &opts.listen {
        config.listen = l.parse().with_context(|| {
            format!("invalid --listen `{l}`: expected an address such as 0.0.0.0:5443")
        })?;
        config.metrics = metrics_for(config.listen.port());
    }
    config.validate()?;
    let (cert, tls_key) = sotto_transport::self_signed_cert(&config.host)?;

    if opts.force {
        // A new identity means a new storage key, so the old database could never be read
        // again: move it aside rather than deleting anybody's messages.
        let db = dir.join(DB_FILE);
        if db.exists() {
            let aside = dir.join(format!("{DB_FILE}.old-{}", unix_now()));
            fs::rename(&db, &aside)
                .with_context(|| format!("cannot move {} aside", db.display()))?;
        }
    }
    write_secret(
        &dir.join(RELAY_KEY_FILE),
        URL_SAFE_NO_PAD.encode(key.secret_bytes()).as_bytes(),
    )?;
    write_secret(
        &dir.join(STORAGE_KEY_FILE),
        URL_SAFE_NO_PAD.encode(storage.as_bytes()).as_bytes(),
    )?;
    write_secret(&dir.join(TLS_KEY_FILE), &tls_key)?;
    write_file(&dir.join(TLS_CERT_FILE), &cert, 0o644)?;
    if rewrite_config {
        write_secret(&config_path, config.to_commented_toml().as_bytes())?;
    }
    crate::store::Store::create(&dir.join(DB_FILE), &storage)?;
    Ok(())
}

/// The metrics address `init --listen` writes for a relay on UDP port `port`: loopback, TCP
/// port `port + 1` (the defaults 5443 and 5444 follow the same rule), so relays on one host
/// with QUIC ports at least 2 apart never share a metrics port. If that port is taken right
/// now (by a running relay or anything else), the next free one above it is used. Port 0
/// (any free port) gives port 0. See `docs/operator.md`, "Several relays on one host".
pub fn metrics_for(port: u16) -> String {
    if port == 0 {
        return "127.0.0.1:0".into();
    }
    let first = port.saturating_add(1);
    let free = (first..=first.saturating_add(100))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
    format!("127.0.0.1:{}", free.unwrap_or(first))
}

/// Everything `run` loads from the data directory.
pub struct Identity {
    /// Noise static key.
    pub relay_key: RelayStaticKey,
    /// Store key.
    pub storage_key: StorageKey,
    /// TLS certificate (DER).
    pub tls_cert: Vec<u8>,
    /// TLS key (PKCS#8 DER).
    pub tls_key: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity(relay: {:?}, secrets: <redacted>)",
            self.relay_key.public()
        )
    }
}

/// Loads the identity files.
///
/// # Errors
/// A message naming the missing, unreadable or malformed file and what to do.
pub fn load_identity(dir: &Path) -> anyhow::Result<Identity> {
    for f in [RELAY_KEY_FILE, STORAGE_KEY_FILE, TLS_KEY_FILE] {
        check_private(&dir.join(f))?;
    }
    let relay_key = RelayStaticKey::from_bytes(read_key(&dir.join(RELAY_KEY_FILE))?);
    let storage_key = StorageKey::from_bytes(read_key(&dir.join(STORAGE_KEY_FILE))?);
    let tls_cert = read(&dir.join(TLS_CERT_FILE))?;
    let tls_key = read(&dir.join(TLS_KEY_FILE))?;
    Ok(Identity {
        relay_key,
        storage_key,
        tls_cert,
        tls_key,
    })
}

/// The relay's address from its key and configured host and port. When `listen_tcp` is on
/// the address carries the transport hint with its port (`?tcp` when it equals `port`);
/// `server::start` puts in the bound ports instead when a configured port is 0.
///
/// # Errors
/// If `config.host` is not a valid host.
pub fn address(key: &RelayStaticKey, config: &Config, port: u16) -> anyhow::Result<RelayAddress> {
    let host: Host = config
        .host
        .parse()
        .with_context(|| format!("invalid host `{}` in configuration", config.host))?;
    Ok(RelayAddress {
        key: key.public(),
        host,
        port,
        // Port 0 (any free port) is only known once bound: no hint until then.
        tcp: config
            .listen_tcp_addr()
            .map(|a| a.port())
            .filter(|p| *p != 0),
    })
}

/// Records `address` as the one the relay serves now ([`SERVED_ADDRESS_FILE`]), so that
/// `sotto-relay address` can tell when flags or an environment it does not see changed it.
/// Best effort: the relay serves whether or not it can write the file.
pub fn record_served_address(dir: &Path, address: &RelayAddress) {
    let path = dir.join(SERVED_ADDRESS_FILE);
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{address}"));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the served address in the data directory");
    }
}

/// The address the relay served when it last started, if it recorded one that parses.
pub fn served_address(dir: &Path) -> Option<RelayAddress> {
    fs::read_to_string(dir.join(SERVED_ADDRESS_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses a secret file that every user of the machine may access (any "other" permission
/// bit), as OpenSSH refuses such a private key, and warns when its group may read it.
/// A missing file, or something that is not a regular file, is left to the read that
/// follows (its error names the fix).
fn check_private(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    if !meta.is_file() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        bail!(
            "{} holds a secret but every user of this machine may access it (mode {mode:03o}): \
             run `chmod 600 {}`; if others may have read it, create a new identity with \
             `sotto-relay init --force`",
            path.display(),
            path.display()
        );
    }
    if mode & 0o070 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:03o}"),
            "a secret file is accessible to its group; run chmod 600 on it unless that is intended"
        );
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| {
        format!(
            "cannot read {}: restore it from your backup, fix its permissions (the relay user must own it), \
             or create a new identity with `sotto-relay init --force`",
            path.display()
        )
    })
}

fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = read(path)?;
    let decoded = URL_SAFE_NO_PAD
        .decode(String::from_utf8_lossy(&text).trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok());
    match decoded {
        Some(k) => Ok(k),
        None => bail!(
            "{} is damaged: expected 32 bytes in base64url. Restore it from your backup",
            path.display()
        ),
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(path, bytes, 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_private_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("relay");
        init(&d, &InitOptions::default()).unwrap();
        for (f, mode) in [
            (RELAY_KEY_FILE, 0o600),
            (STORAGE_KEY_FILE, 0o600),
            (TLS_KEY_FILE, 0o600),
            (CONFIG_FILE, 0o600),
            (DB_FILE, 0o600),
        ] {
            let m = fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let id1 = load_identity(&d).unwrap();
        let err = init(&d, &InitOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--force"));
        assert_eq!(
            load_identity(&d).unwrap().relay_key.public(),
            id1.relay_key.public()
        );
        init(
            &d,
            &InitOptions {
                force: true,
                ..InitOptions::default()
            },
        )
        .unwrap();
        assert_ne!(
            load_identity(&d).unwrap().relay_key.public(),
            id1.relay_key.public()
        );
    }

    #[test]
    fn init_force_keeps_the_operators_config() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d, &InitOptions::default()).unwrap();
        let mut c = Config::load(d, |_| None, &crate::config::Overrides::default()).unwrap();
        c.create_password = "private relay".into();
        c.queues.quota = 7;
        write_secret(&d.join(CONFIG_FILE), c.to_commented_toml().as_bytes()).unwrap();
        let before = fs::read(d.join(CONFIG_FILE)).unwrap();
        let force = InitOptions {
            force: true,
            ..InitOptions::default()
        };
        init(d, &force).unwrap();
        assert_eq!(
            fs::read(d.join(CONFIG_FILE)).unwrap(),
            before,
            "byte for byte"
        );
        // --host changes the host and nothing else.
        init(
            d,
            &InitOptions {
                host: Some("relay.example.org".into()),
                ..force
            },
        )
        .unwrap();
        let after = Config::load(d, |_| None, &crate::config::Overrides::default()).unwrap();
        assert_eq!(after.host, "relay.example.org");
        assert_eq!(after.create_password, "private relay");
        assert_eq!(after.queues.quota, 7);
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &InitOptions::default()).unwrap();
        for f in [RELAY_KEY_FILE, STORAGE_KEY_FILE, TLS_KEY_FILE] {
            let p = dir.path().join(f);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            let e = load_identity(dir.path()).unwrap_err().to_string();
            assert!(e.contains(f) && e.contains("chmod 600"), "{e}");
            // Group-readable is only warned about.
            fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
            load_identity(dir.path()).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn damaged_or_missing_key_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &InitOptions::default()).unwrap();
        fs::write(dir.path().join(STORAGE_KEY_FILE), "not a key").unwrap();
        let e = load_identity(dir.path()).unwrap_err().to_string();
        assert!(e.contains("storage.key") && e.contains("damaged"), "{e}");
        fs::remove_file(dir.path().join(RELAY_KEY_FILE)).unwrap();
        let e = format!("{:#}", load_identity(dir.path()).unwrap_err());
        assert!(e.contains("relay.key"), "{e}");
    }

    #[test]
    fn init_listen_puts_metrics_on_the_next_port_unless_it_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let init_on = |name: &str, listen: &str| {
            let d = dir.path().join(name);
            init(
                &d,
                &InitOptions {
                    listen: Some(listen.into()),
                    ..InitOptions::default()
                },
            )
            .unwrap();
            crate::config::Config::load(&d, |_| None, &crate::config::Overrides::default())
                .unwrap()
                .metrics
        };
        // A port pair nobody uses: the rule.
        let port = (20_000u16..30_000)
            .step_by(7)
            .find(|p| {
                std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", p + 2)).is_ok()
            })
            .unwrap();
        assert_eq!(
            init_on("a", &format!("0.0.0.0:{port}")),
            format!("127.0.0.1:{}", port + 1)
        );
        // Taken (a relay running there): the next free port.
        let _held = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
        assert_eq!(
            init_on("b", &format!("0.0.0.0:{port}")),
            format!("127.0.0.1:{}", port + 2)
        );
        assert_eq!(init_on("c", "127.0.0.1:0"), "127.0.0.1:0");
        // Without --listen, the defaults (5443, 5444).
        init(&dir.path().join("d"), &InitOptions::default()).unwrap();
    }

    #[test]
    fn the_address_announces_the_tcp_listener() {
        let key = RelayStaticKey::generate(&mut rand::rngs::OsRng);
        let with = |listen_tcp: &str| {
            let config = Config {
                host: "relay.example.org".into(),
                listen_tcp: listen_tcp.into(),
                ..Config::default()
            };
            address(&key, &config, 5443).unwrap().to_string()
        };
        assert!(with("off").ends_with("@relay.example.org"));
        assert!(with("0.0.0.0:5443").ends_with("@relay.example.org?tcp"));
        assert!(with("0.0.0.0:443").ends_with("@relay.example.org?tcp=443"));
        // Any free port: only the running relay knows it.
        assert!(with("127.0.0.1:0").ends_with("@relay.example.org"));
    }
}
