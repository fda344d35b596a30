//! TLS for the Kafka listeners whose security protocol is `SSL`: the server configuration
//! (rustls on ring: TLS 1.3 and 1.2, AEAD suites with forward secrecy only), loaded from PEM
//! files and reloaded in place (SIGHUP) without touching the connections already open, and the
//! principal a client certificate maps to (Kafka's `ssl.principal.mapping.rules`).
//!
//! Invariants: a [`TlsServer`] always holds a complete, valid configuration (a reload that
//! fails leaves the previous one in force); connections keep the configuration they were
//! accepted with; a client without a certificate is `User:ANONYMOUS`, as in Kafka.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Kafka's `ssl.client.auth`: whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate asked for.
    None,
    /// Asked for; a client without one is `User:ANONYMOUS`. One it presents must verify.
    Requested,
    /// A certificate that verifies against the client CA is needed to connect.
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!("{other:?} is not one of none, requested, required")),
        }
    }
}

/// Where the TLS listeners' keys and trust come from.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM: the server certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CA certificates client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub principal_rules: PrincipalRules,
}

/// Which setting a TLS configuration problem is about, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TlsError {
    /// The config field (`ssl_certificate`, `ssl_key`, `ssl_client_ca`, `ssl_client_auth`).
    pub field: &'static str,
    pub reason: String,
}

fn tls_error(field: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        field,
        reason: reason.to_string(),
    }
}

/// The TLS side of every `SSL` listener of the node: one configuration, shared by all shards,
/// replaced as a whole by [`TlsServer::reload`].
#[derive(Debug)]
pub struct TlsServer {
    settings: TlsSettings,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsServer {
    /// Loads the files `settings` names; an unreadable or invalid one is an error naming its
    /// field.
    pub fn load(settings: TlsSettings) -> Result<TlsServer, TlsError> {
        let config = build(&settings)?;
        Ok(TlsServer {
            settings,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again (rotated certificates, a new client CA). New connections use the
    /// new configuration; open ones keep theirs. On error the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Kafka's `ssl.client.auth` value in force.
    pub fn client_auth_name(&self) -> &'static str {
        match self.settings.client_auth {
            ClientAuth::None => "none",
            ClientAuth::Requested => "requested",
            ClientAuth::Required => "required",
        }
    }

    /// An acceptor for one new connection, with the configuration in force now.
    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        futures_rustls::TlsAcceptor::from(config)
    }

    /// The principal of a connection whose client presented `certificates` (leaf first).
    pub fn principal_of(
        &self,
        certificates: Option<&[CertificateDer<'_>]>,
    ) -> Result<String, String> {
        match certificates.and_then(|c| c.first()) {
            None => Ok(ANONYMOUS.to_string()),
            Some(leaf) => {
                let dn = subject_dn(leaf)?;
                Ok(format!(
                    "User:{}",
                    self.settings.principal_rules.apply(&dn)?
                ))
            }
        }
    }
}

/// Kafka's principal for a client that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

fn build(settings: &TlsSettings) -> Result<rustls::ServerConfig, TlsError> {
    let certificates =
        read_certificates(&settings.certificate).map_err(|e| tls_error("ssl_certificate", e))?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| {
        tls_error(
            "ssl_key",
            format!("{}: no usable private key ({e})", settings.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_error("ssl_certificate", e))?;
    let builder = match (settings.client_auth, &settings.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(tls_error(
                "ssl_client_ca",
                "must be set when ssl_client_auth is requested or required",
            ))
        }
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(ca).map_err(|e| tls_error("ssl_client_ca", e))? {
                roots
                    .add(cert)
                    .map_err(|e| tls_error("ssl_client_ca", format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| tls_error("ssl_client_ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certificates, key)
        .map_err(|e| tls_error("ssl_key", format!("does not fit the certificate: {e}")))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certificates)
}

/// The certificate's subject as Java's `X500Principal.getName()` writes it (RFC 2253: the
/// most specific name first, `CN=alice,OU=ops,O=Example,C=DE`), which is what Kafka's
/// principal mapping rules are written against.
pub fn subject_dn(certificate: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let mut rdns: Vec<String> = parsed
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let keyword = match oid.as_str() {
                        "2.5.4.3" => "CN",
                        "2.5.4.6" => "C",
                        "2.5.4.7" => "L",
                        "2.5.4.8" => "ST",
                        "2.5.4.9" => "STREET",
                        "2.5.4.10" => "O",
                        "2.5.4.11" => "OU",
                        "0.9.2342.19200300.100.1.1" => "UID",
                        "0.9.2342.19200300.100.1.25" => "DC",
                        _ => "",
                    };
                    let value = match atv.as_str() {
                        Ok(text) => escape_rfc2253(text),
                        Err(_) => format!("#{}", hex(atv.attr_value().data)),
                    };
                    if keyword.is_empty() {
                        format!("{oid}={value}")
                    } else {
                        format!("{keyword}={value}")
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    Ok(rdns.join(","))
}

fn escape_rfc2253(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kafka's `ssl.principal.mapping.rules`: `RULE:pattern/replacement/[LU]` entries and
/// `DEFAULT`, comma-separated, tried in order; the first whose pattern matches the whole
/// distinguished name gives the principal name (`$1` refers to a group; `L`/`U` lower- or
/// upper-case the result); `DEFAULT` takes the name as it is. No rule matching refuses the
/// connection, as in Kafka.
#[derive(Debug, Clone)]
pub struct PrincipalRules {
    rules: Vec<PrincipalRule>,
}

#[derive(Debug, Clone)]
enum PrincipalRule {
    Default,
    Rule {
        pattern: regex::Regex,
        replacement: String,
        case: Option<char>,
    },
}

impl Default for PrincipalRules {
    fn default() -> Self {
        PrincipalRules {
            rules: vec![PrincipalRule::Default],
        }
    }
}

impl std::str::FromStr for PrincipalRules {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        // One rule: DEFAULT, or RULE: then a pattern and a replacement, each up to an unescaped
        // `/`, then an optional case flag; rules are separated by commas.
        let rule = regex::Regex::new(
            r"^\s*(?:(DEFAULT)|RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?))\s*(?:,|$)",
        )
        .expect("valid pattern");
        let group_reference = regex::Regex::new(r"\$(\d+)").expect("valid pattern");
        let mut rules = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let Some(found) = rule.captures(rest) else {
                return Err(format!("cannot read a rule at {rest:?}"));
            };
            if found.get(1).is_some() {
                rules.push(PrincipalRule::Default);
            } else {
                let raw = &found[2];
                let pattern = regex::Regex::new(&format!("^(?:{raw})$"))
                    .map_err(|e| format!("pattern {raw:?}: {e}"))?;
                // Java writes group references `$1`; the regex crate would read `$1x` as a
                // group named `1x`.
                let replacement = group_reference
                    .replace_all(&found[3], "$${$1}")
                    .into_owned();
                rules.push(PrincipalRule::Rule {
                    pattern,
                    replacement,
                    case: found[4].chars().next(),
                });
            }
            rest = &rest[found[0].len()..];
        }
        if rules.is_empty() {
            return Err("no rule (DEFAULT keeps the distinguished name)".into());
        }
        Ok(PrincipalRules { rules })
    }
}

impl PrincipalRules {
    /// The principal name for the distinguished name `dn`.
    pub fn apply(&self, dn: &str) -> Result<String, String> {
        for rule in &self.rules {
            match rule {
                PrincipalRule::Default => return Ok(dn.to_string()),
                PrincipalRule::Rule {
                    pattern,
                    replacement,
                    case,
                } => {
                    if !pattern.is_match(dn) {
                        continue;
                    }
                    let name = pattern.replace(dn, replacement.as_str()).into_owned();
                    return Ok(match case {
                        Some('L') => name.to_lowercase(),
                        Some('U') => name.to_uppercase(),
                        _ => name,
                    });
                }
            }
        }
        Err(format!(
            "no ssl_principal_mapping_rules rule applies to {dn:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_with(subject: &[(rcgen::DnType, &str)]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            dn.push(kind.clone(), *value);
        }
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_subject_reads_as_java_writes_it() {
        let cert = certificate_with(&[
            (rcgen::DnType::CountryName, "DE"),
            (rcgen::DnType::OrganizationName, "Example, Inc"),
            (rcgen::DnType::OrganizationalUnitName, "ops"),
            (rcgen::DnType::CommonName, "alice"),
        ]);
        assert_eq!(
            subject_dn(&cert).unwrap(),
            r"CN=alice,OU=ops,O=Example\, Inc,C=DE"
        );
    }

    #[test]
    fn mapping_rules_behave_as_kafkas() {
        let rules: PrincipalRules =
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/, RULE:^CN=(.*?),OU=(.*?),.*$/$1@$2/L, DEFAULT"
                .parse()
                .unwrap();
        assert_eq!(
            rules
                .apply("CN=kafka-app,OU=ServiceUsers,O=Example")
                .unwrap(),
            "kafka-app"
        );
        assert_eq!(
            rules.apply("CN=Alice,OU=Ops,O=Example").unwrap(),
            "alice@ops"
        );
        assert_eq!(rules.apply("CN=bob").unwrap(), "CN=bob");
        let upper: PrincipalRules = "RULE:^CN=([^,]*).*$/$1/U".parse().unwrap();
        assert_eq!(upper.apply("CN=carol,O=x").unwrap(), "CAROL");
        assert!(upper
            .apply("O=x")
            .unwrap_err()
            .contains("no ssl_principal_mapping_rules"));
        assert_eq!(
            PrincipalRules::default().apply("CN=a,O=b").unwrap(),
            "CN=a,O=b"
        );
    }

    #[test]
    fn unreadable_rules_are_refused() {
        for bad in ["", "RULE:abc", "NOPE", "RULE:(/x/", "DEFAULT,RULE:a/b/Q"] {
            assert!(bad.parse::<PrincipalRules>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_or_bad_files_name_their_field() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("junk.pem"), "not pem").unwrap();
        let settings = |certificate: &str, key: &str, client_auth, ca: Option<&str>| TlsSettings {
            certificate: dir.join(certificate),
            key: dir.join(key),
            client_ca: ca.map(|c| dir.join(c)),
            client_auth,
            principal_rules: PrincipalRules::default(),
        };
        assert!(TlsServer::load(settings("cert.pem", "key.pem", ClientAuth::None, None)).is_ok());
        let field = |s| TlsServer::load(s).unwrap_err().field;
        assert_eq!(
            field(settings("nope.pem", "key.pem", ClientAuth::None, None)),
            "ssl_certificate"
        );
        assert_eq!(
            field(settings("junk.pem", "key.pem", ClientAuth::None, None)),
            "ssl_certificate"
        );
        assert_eq!(
            field(settings("cert.pem", "junk.pem", ClientAuth::None, None)),
            "ssl_key"
        );
        assert_eq!(
            field(settings("cert.pem", "key.pem", ClientAuth::Required, None)),
            "ssl_client_ca"
        );
        assert_eq!(
            field(settings(
                "cert.pem",
                "key.pem",
                ClientAuth::Required,
                Some("junk.pem")
            )),
            "ssl_client_ca"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
