//! TLS for the swarm's NATS server. `vgas init` makes a small CA of the swarm's own (ECDSA
//! P-256, `<state dir>/tls/ca.pem`, its key mode 0600) and a server certificate for every name
//! and address this host has (plus `--tls-name`), and writes `<state dir>/tls.conf`, which
//! `nats.conf` includes: the server then takes TLS connections only. Every credentials file
//! it writes carries the CA certificate (public), so a process verifies the server against
//! the swarm's CA, and insists on TLS, from whichever host it runs on. `--no-tls` writes a
//! `tls.conf` that turns nothing on (a server on loopback only, or behind another TLS layer).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::files::write_private;

/// The folder under the state directory.
pub const TLS_DIR: &str = "tls";
/// The configuration fragment `nats.conf` includes, under the state directory.
pub const TLS_CONF: &str = "tls.conf";

/// How long the CA is valid: it is the swarm's root of trust, replaced by hand.
const CA_DAYS: i64 = 3650;
/// How long a server certificate is valid; `vgas init --renew-tls` makes a new one.
const SERVER_DAYS: i64 = 825;
/// Seconds nats-server gives a client to finish the handshake (its default, 0.5 s, is short
/// for a loaded 2-core host).
const HANDSHAKE_TIMEOUT_S: u32 = 2;

/// How `vgas init` sets up TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Leave TLS off: the server takes plain-text connections (on loopback only, or behind
    /// another TLS layer).
    #[arg(long)]
    pub no_tls: bool,
    /// A further name or address clients reach the server by, for its certificate
    /// (repeatable; this host's name and addresses are always in it).
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
    /// Make a new server certificate (after the host's name or addresses changed).
    #[arg(long)]
    pub renew_tls: bool,
    /// Mutual TLS: the server also asks every client for a certificate from the swarm's CA,
    /// which each credentials file then carries.
    #[arg(long, conflicts_with = "no_tls")]
    pub mutual_tls: bool,
}

/// The files of a swarm's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub conf: PathBuf,
}

impl TlsFiles {
    pub fn new(state_dir: &Path) -> TlsFiles {
        let dir = state_dir.join(TLS_DIR);
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server-cert.pem"),
            server_key: dir.join("server-key.pem"),
            conf: state_dir.join(TLS_CONF),
        }
    }
}

/// Makes what is missing (the CA; the server certificate, or a new one with `renew`) and
/// writes `tls.conf`; returns the CA certificate (PEM) to put in credentials files. With
/// `enabled` false, writes a `tls.conf` that turns TLS off and returns `None`.
pub fn ensure(state_dir: &Path, args: &TlsArgs) -> Result<Option<String>> {
    let (extra_names, renew) = (&args.tls_names, args.renew_tls);
    let files = TlsFiles::new(state_dir);
    if args.no_tls {
        write_private(
            &files.conf,
            b"# Written by `vgas init --no-tls`: the server takes plain-text connections.\n",
        )?;
        return Ok(None);
    }
    let dir = state_dir.join(TLS_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    if !files.ca_cert.exists() || !files.ca_key.exists() {
        let key = KeyPair::generate().context("generate the CA key")?;
        let mut params = ca_params()?;
        valid_for(&mut params, CA_DAYS);
        let cert = params
            .self_signed(&key)
            .context("sign the CA certificate")?;
        write_private(&files.ca_key, key.serialize_pem().as_bytes())?;
        write_public(&files.ca_cert, cert.pem().as_bytes())?;
    }
    if renew || !files.server_cert.exists() || !files.server_key.exists() {
        // Client use too: a server shows it on the routes and leaf links it dials.
        let (cert, key) = leaf(
            &files,
            server_names(extra_names),
            "vgas nats-server",
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        write_private(&files.server_key, key.as_bytes())?;
        write_public(&files.server_cert, cert.as_bytes())?;
    }
    // Absolute paths: nats-server resolves them against its working directory.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    // Mutual TLS: every client shows a certificate from the same CA.
    let mutual = if args.mutual_tls {
        format!(
            "  ca_file: \"{}\"\n  verify: true\n",
            abs(&files.ca_cert).display()
        )
    } else {
        String::new()
    };
    let conf = format!(
        "# Written by `vgas init`: the server takes TLS connections only, with a certificate\n\
         # from the swarm's own CA (tls/ca.pem, which every credentials file carries).\n\
         tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: {HANDSHAKE_TIMEOUT_S}\n{mutual}}}\n",
        abs(&files.server_cert).display(),
        abs(&files.server_key).display(),
    );
    write_private(&files.conf, conf.as_bytes())?;
    fs::read_to_string(&files.ca_cert)
        .map(Some)
        .with_context(|| format!("read {}", files.ca_cert.display()))
}

/// Gives `creds` a client certificate from the swarm's CA (named after its user) when the
/// server asks for one (`verify: true` in `tls.conf`) and it has none.
pub fn give_client_cert(
    state_dir: &Path,
    creds: &mut vgas_shared::config::Credentials,
) -> Result<()> {
    let files = TlsFiles::new(state_dir);
    let mutual = fs::read_to_string(&files.conf).is_ok_and(|c| c.contains("verify: true"));
    if !mutual || creds.cert.is_some() {
        return Ok(());
    }
    let (cert, key) = leaf(
        &files,
        Vec::new(),
        &creds.user,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    creds.cert = Some(cert);
    creds.key = Some(key);
    Ok(())
}

/// A certificate the swarm's CA signs for `names` (subject alternative names), named `cn`,
/// for `usage` (server, client or both): its PEM and its new key's PEM.
fn leaf(
    files: &TlsFiles,
    names: Vec<String>,
    cn: &str,
    usage: &[ExtendedKeyUsagePurpose],
) -> Result<(String, String)> {
    let ca_key_pem = fs::read_to_string(&files.ca_key)
        .with_context(|| format!("read {}", files.ca_key.display()))?;
    // The issuer is the CA's name and key: the same parameters it was made from.
    let issuer = Issuer::new(
        ca_params()?,
        KeyPair::from_pem(&ca_key_pem).context("the CA key")?,
    );
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usage.to_vec();
    valid_for(&mut params, SERVER_DAYS);
    let key = KeyPair::generate().context("generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("sign a certificate with the swarm's CA")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA certificate when the swarm's `tls.conf` turns TLS on (what `vgas node add` puts in
/// a node's credentials).
pub fn current_ca(state_dir: &Path) -> Result<Option<String>> {
    let files = TlsFiles::new(state_dir);
    let on = fs::read_to_string(&files.conf).is_ok_and(|c| c.contains("tls {"));
    if !on {
        return Ok(None);
    }
    fs::read_to_string(&files.ca_cert)
        .map(Some)
        .with_context(|| format!("read {}", files.ca_cert.display()))
}

/// The CA's name, constraints and uses (its validity is set when it is made).
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "vgas swarm CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// The names the server certificate covers: `localhost`, this host's name, every address of
/// its interfaces (loopback included), and `extra` (names or addresses it is reached by).
fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    let host = vgas_shared::host::hostname();
    if !host.is_empty() {
        names.push(host);
    }
    let mut addrs: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().expect("::1")];
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        addrs.extend(ifs.iter().filter(|i| !i.is_link_local()).map(|i| i.ip()));
    }
    names.extend(addrs.iter().map(IpAddr::to_string));
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Writes a public file (a certificate): mode 0644.
fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    write_private(path, bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", path.display()))
}

/// A TLS client configuration that trusts only `ca_pem` (the swarm's CA) and presents
/// `client` (certificate and key, PEM) when given.
pub fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the CA certificate in the credentials")?)
            .context("the CA certificate in the credentials")?;
    }
    if roots.is_empty() {
        anyhow::bail!("the credentials' CA holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let Some((cert, key)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the client certificate in the credentials")?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
        .context("the client key in the credentials")?;
    builder
        .with_client_auth_cert(chain, key)
        .context("the client certificate in the credentials")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_and_a_server_certificate_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let args = |names: &[&str], renew: bool, no_tls: bool| TlsArgs {
            no_tls,
            tls_names: names.iter().map(|n| n.to_string()).collect(),
            renew_tls: renew,
            mutual_tls: false,
        };
        let ca = ensure(dir.path(), &args(&["nats.example"], false, false))
            .unwrap()
            .unwrap();
        let files = TlsFiles::new(dir.path());
        let conf = fs::read_to_string(&files.conf).unwrap();
        assert!(
            conf.contains("tls {") && conf.contains("server-cert.pem"),
            "{conf}"
        );
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
        };
        assert_eq!(mode(&files.ca_key), 0o600);
        assert_eq!(mode(&files.server_key), 0o600);
        assert_eq!(mode(&files.ca_cert), 0o644);
        client_config(&ca, None).unwrap();
        // Kept on a second run; a renewal replaces the server certificate only.
        let before = fs::read(&files.server_cert).unwrap();
        assert_eq!(
            ensure(dir.path(), &args(&[], false, false))
                .unwrap()
                .unwrap(),
            ca
        );
        assert_eq!(fs::read(&files.server_cert).unwrap(), before);
        assert_eq!(
            ensure(dir.path(), &args(&[], true, false))
                .unwrap()
                .unwrap(),
            ca
        );
        assert_ne!(fs::read(&files.server_cert).unwrap(), before);
        // Off: the fragment turns nothing on.
        assert!(ensure(dir.path(), &args(&[], false, true))
            .unwrap()
            .is_none());
        assert!(!fs::read_to_string(&files.conf).unwrap().contains("tls {"));
        assert!(client_config("not a pem", None).is_err());
    }
}
