//! `PROVISION_KEEP_KEY=true`: the device's private key is made here, kept in the data
//! directory (mode 0600), and only a certificate signing request leaves the device, so no
//! private key ever passes through the function or balenaCloud.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData as _};

const FILE: &str = "device-key.pem";

/// The kept key (an ECDSA P-256 key, PKCS#8 PEM).
pub struct KeptKey {
    pub path: PathBuf,
    /// Made by this start (none was kept): a credential registered before cannot be for it.
    pub fresh: bool,
    key: KeyPair,
}

impl KeptKey {
    /// The key in `dir`, made (and durably written) on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<KeptKey> {
        let path = dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = KeyPair::from_pem(&pem)
                    .with_context(|| format!("reading the kept key {}", path.display()))?;
                Ok(KeptKey {
                    path,
                    fresh: false,
                    key,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("making {}", dir.display()))?;
                let key = KeyPair::generate().context("making the device key")?;
                write_private(&path, key.serialize_pem().as_bytes())?;
                tracing::info!("kept key: made a new device key in {}", path.display());
                Ok(KeptKey {
                    path,
                    fresh: true,
                    key,
                })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public key's DER (SubjectPublicKeyInfo), to compare with a certificate's.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// A PKCS#10 request for this key, its subject the device UUID (what the function checks).
    pub fn csr_pem(&self, uuid: &str) -> anyhow::Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, uuid);
        params.distinguished_name = name;
        Ok(params.serialize_request(&self.key)?.pem()?)
    }
}

/// Writes a secret file: readable by its owner only, complete or absent after a crash.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("moving the key into {}", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer as _;

    #[test]
    fn the_key_is_made_once_kept_private_and_named_in_the_csr() {
        let dir = std::env::temp_dir().join(format!("cloud-relay-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = KeptKey::load_or_create(&dir).unwrap();
        let again = KeptKey::load_or_create(&dir).unwrap();
        assert_eq!(first.public_key_der(), again.public_key_der());
        assert!(first.fresh && !again.fresh);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let csr = first.csr_pem("0123456789abcdef0123456789abcdef").unwrap();
        let der = rustls::pki_types::CertificateSigningRequestDer::from(
            x509_parser::pem::parse_x509_pem(csr.as_bytes())
                .unwrap()
                .1
                .contents,
        );
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        let cn = request
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(cn, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            request.certification_request_info.subject_pki.raw,
            first.public_key_der().as_slice()
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
