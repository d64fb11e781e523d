//! The OCI SDK/CLI config file (`~/.oci/config`) and the API signing key it points to.
//!
//! We read the same file the OCI CLI and SDKs read, so an operator who can run `oci` can run Sluice with the same
//! credentials. The format is Python `configparser` INI: `[PROFILE]` sections, `key = value` (or `key: value`) lines,
//! `#`/`;` comment lines, case-insensitive keys; every profile inherits the keys of `[DEFAULT]`. Only API-key auth is
//! supported (`user`, `fingerprint`, `key_file`, `tenancy`, `region`); `security_token_file` (session auth) and
//! instance/resource principals are not.
//!
//! Differences from the SDK, on purpose: a relative `key_file` is taken relative to the config file's directory (not
//! the working directory, which a service manager chooses), and encrypted keys (`pass_phrase`) are refused with a
//! message saying how to decrypt them, since neither `ring` nor a passphrase prompt fits a server.

use super::OciError;
use ring::rsa::KeyPair;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The keys a profile must have (after `[DEFAULT]` inheritance) for API-key signing. `region` is checked separately,
/// since `[scaling.oci] region` or `endpoint` can stand in for it.
pub const REQUIRED_KEYS: [&str; 4] = ["user", "fingerprint", "key_file", "tenancy"];

/// One resolved profile: what request signing and the default endpoint need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub tenancy: String,
    pub user: String,
    pub fingerprint: String,
    /// Absolute or relative to the process's working directory (already resolved against the config file's folder).
    pub key_file: PathBuf,
    pub region: Option<String>,
}

impl Profile {
    /// `keyId` of the `Authorization` header: `<tenancy>/<user>/<fingerprint>`.
    pub fn key_id(&self) -> String {
        format!("{}/{}/{}", self.tenancy, self.user, self.fingerprint)
    }
}

/// Sections of an INI file, each a map of lowercased key to value. `[DEFAULT]` is kept as its own section.
pub type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// Parses configparser-style INI text. Errors carry the 1-based line number.
pub fn parse_ini(text: &str) -> Result<Sections, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    let mut last_key: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        // An indented line continues the previous value (configparser's multi-line values).
        if line.starts_with([' ', '\t']) {
            if let (Some(section), Some(key)) = (&current, &last_key) {
                if let Some(value) = sections.get_mut(section).and_then(|s| s.get_mut(key)) {
                    value.push('\n');
                    value.push_str(trimmed);
                    continue;
                }
            }
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err((number, format!("section header '{trimmed}' has no closing ']'")));
            };
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            last_key = None;
            continue;
        }
        let Some(section) = &current else {
            return Err((number, "a key appears before any [section] header".into()));
        };
        let Some(split) = trimmed.find(['=', ':']) else {
            return Err((number, format!("'{trimmed}' is neither a [section], a comment nor a key = value line")));
        };
        let key = trimmed[..split].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err((number, "a line has a value but no key".into()));
        }
        let value = trimmed[split + 1..].trim().to_string();
        sections.entry(section.clone()).or_default().insert(key.clone(), value);
        last_key = Some(key);
    }
    Ok(sections)
}

/// The keys of `profile` with `[DEFAULT]` underneath, or `None` when the profile does not exist.
pub fn merged_profile(sections: &Sections, profile: &str) -> Option<BTreeMap<String, String>> {
    let default = sections.get("DEFAULT");
    let own = sections.get(profile)?;
    let mut merged = default.cloned().unwrap_or_default();
    if profile != "DEFAULT" {
        merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Some(merged)
}

/// `~` or `~/…` → `$HOME/…`.
pub fn expand_home(path: &Path, home: Option<&Path>) -> PathBuf {
    let Some(home) = home else { return path.to_path_buf() };
    match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// `$HOME`, when set and not empty.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The config file to read: `[scaling.oci] config_file`, else `$OCI_CONFIG_FILE`, else `~/.oci/config`.
pub fn config_file_path(configured: Option<&Path>) -> Result<PathBuf, OciError> {
    let home = home_dir();
    if let Some(path) = configured {
        return Ok(expand_home(path, home.as_deref()));
    }
    if let Some(env) = std::env::var_os("OCI_CONFIG_FILE").filter(|v| !v.is_empty()) {
        return Ok(expand_home(Path::new(&env), home.as_deref()));
    }
    match home {
        Some(home) => Ok(home.join(".oci").join("config")),
        None => Err(OciError::NoConfigFile),
    }
}

/// Reads and resolves `profile` of the config file at `path`.
pub fn load_profile(path: &Path, profile: &str) -> Result<Profile, OciError> {
    let text = std::fs::read_to_string(path).map_err(|source| OciError::ConfigFile { path: path.to_path_buf(), source })?;
    resolve_profile(&text, path, profile, home_dir().as_deref())
}

/// Resolves `profile` from the text of the config file at `path` (used for messages and relative `key_file`s).
pub fn resolve_profile(text: &str, path: &Path, profile: &str, home: Option<&Path>) -> Result<Profile, OciError> {
    let sections = parse_ini(text)
        .map_err(|(line, message)| OciError::ConfigSyntax { path: path.to_path_buf(), line, message })?;
    let values = merged_profile(&sections, profile).ok_or_else(|| OciError::Profile {
        path: path.to_path_buf(),
        profile: profile.to_string(),
        available: sections.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let get = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let missing: Vec<&str> = REQUIRED_KEYS.iter().copied().filter(|k| get(k).is_none()).collect();
    if get("security_token_file").is_some() && !missing.is_empty() {
        return Err(bad(path, profile, "security_token_file", "session-token auth is not supported; use an API key profile"));
    }
    if !missing.is_empty() {
        return Err(OciError::MissingKeys { path: path.to_path_buf(), profile: profile.to_string(), keys: missing.join(", ") });
    }
    let field = |key: &str| get(key).unwrap_or_default().to_string();
    let (tenancy, user, fingerprint) = (field("tenancy"), field("user"), field("fingerprint"));
    for (key, value) in [("tenancy", &tenancy), ("user", &user)] {
        if !value.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '/') {
            return Err(bad(path, profile, key, &format!("'{value}' is not an OCID (printable ASCII without '\"' or '/')")));
        }
    }
    if !is_fingerprint(&fingerprint) {
        return Err(bad(
            path,
            profile,
            "fingerprint",
            &format!("'{fingerprint}' is not 16 lowercase hex pairs separated by ':' (as the console shows it)"),
        ));
    }
    let key_file = expand_home(Path::new(&field("key_file")), home);
    let key_file = if key_file.is_relative() {
        path.parent().map(|dir| dir.join(&key_file)).unwrap_or(key_file)
    } else {
        key_file
    };
    let region = get("region").map(str::to_string);
    Ok(Profile { tenancy, user, fingerprint, key_file, region })
}

fn bad(path: &Path, profile: &str, key: &str, message: &str) -> OciError {
    OciError::BadValue { path: path.to_path_buf(), profile: profile.to_string(), key: key.to_string(), message: message.to_string() }
}

/// The SDK's rule: `^([0-9a-f]{2}:){15}[0-9a-f]{2}$`.
pub fn is_fingerprint(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 16 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Reads the API signing key at `path`; `origin` says where the path came from (for messages).
pub fn load_key(path: &Path, origin: &str) -> Result<KeyPair, OciError> {
    let bytes = std::fs::read(path)
        .map_err(|source| OciError::KeyFile { path: path.to_path_buf(), origin: origin.to_string(), source })?;
    parse_key(&bytes).map_err(|message| OciError::Key { path: path.to_path_buf(), origin: origin.to_string(), message })
}

/// Parses an unencrypted RSA private key: PKCS#8 (`BEGIN PRIVATE KEY`, what the OCI console hands out) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`, from `openssl genrsa`). The PEM is parsed before the DER is decoded, which tolerates CRLF
/// line ends and the `OCI_API_KEY` line the console appends after the PEM block.
pub fn parse_key(bytes: &[u8]) -> Result<KeyPair, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("the key is encrypted (it needs a pass_phrase); Sluice needs an unencrypted key: decrypt a copy with \
                    `openssl pkey -in KEY.pem -out KEY-plain.pem` (keep it readable only by Sluice's user)"
            .into());
    }
    let blocks = pem::parse_many(bytes).map_err(|e| format!("not a valid PEM file: {e}"))?;
    let Some(block) = blocks.iter().find(|b| matches!(b.tag(), "PRIVATE KEY" | "RSA PRIVATE KEY")) else {
        let tags: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
        return Err(if tags.is_empty() {
            "no PEM block found; expected '-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----'".into()
        } else {
            format!("no private key found (PEM blocks: {}); key_file must be the private API key", tags.join(", "))
        });
    };
    let parsed = if block.tag() == "PRIVATE KEY" { KeyPair::from_pkcs8(block.contents()) } else { KeyPair::from_der(block.contents()) };
    parsed.map_err(|e| format!("not a usable RSA private key ({e}); OCI API keys are RSA, 2048 bits or more"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const PKCS8: &str = include_str!("testdata/TEST_ONLY_rsa2048_pkcs8.pem");
    pub const PKCS1: &str = include_str!("testdata/TEST_ONLY_rsa2048_pkcs1.pem");
    pub const FINGERPRINT: &str = "89:da:cf:0c:14:db:27:25:a0:2c:fe:66:c1:4f:f3:c2";

    fn resolve(text: &str, profile: &str) -> Result<Profile, OciError> {
        resolve_profile(text, Path::new("/etc/oci/config"), profile, Some(Path::new("/home/op")))
    }

    const FILE: &str = "\
# comment
[DEFAULT]
user=ocid1.user.oc1..u
fingerprint = 89:da:cf:0c:14:db:27:25:a0:2c:fe:66:c1:4f:f3:c2
key_file=~/.oci/key.pem
tenancy=ocid1.tenancy.oc1..t
region=us-ashburn-1

[PROD]
; other comment
Region: eu-frankfurt-1
key_file = keys/prod.pem
";

    #[test]
    fn profiles_inherit_default() {
        let default = resolve(FILE, "DEFAULT").unwrap();
        assert_eq!(default.key_file, Path::new("/home/op/.oci/key.pem"));
        assert_eq!(default.region.as_deref(), Some("us-ashburn-1"));
        assert_eq!(default.key_id(), format!("ocid1.tenancy.oc1..t/ocid1.user.oc1..u/{FINGERPRINT}"));
        let prod = resolve(FILE, "PROD").unwrap();
        assert_eq!(prod.user, "ocid1.user.oc1..u");
        assert_eq!(prod.region.as_deref(), Some("eu-frankfurt-1"), "keys are case-insensitive, ':' also separates");
        assert_eq!(prod.key_file, Path::new("/etc/oci/keys/prod.pem"), "relative to the config file's folder");
    }

    #[test]
    fn crlf_and_bom_are_accepted() {
        let text = format!("\u{feff}{}", FILE.replace('\n', "\r\n"));
        assert_eq!(resolve(&text, "PROD").unwrap(), resolve(FILE, "PROD").unwrap());
    }

    #[test]
    fn missing_profile_and_keys_are_named() {
        let err = resolve(FILE, "STAGING").unwrap_err().to_string();
        assert!(err.contains("[STAGING]") && err.contains("/etc/oci/config") && err.contains("DEFAULT, PROD"), "{err}");
        let err = resolve("[DEFAULT]\nuser=ocid1.user.oc1..u\nregion=x\n", "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("fingerprint, key_file, tenancy"), "{err}");
        let err = resolve("[DEFAULT]\nsecurity_token_file=/t\nregion=x\n", "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("session-token auth is not supported"), "{err}");
        let err = resolve("[A]\ntenancy=t\n", "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("[DEFAULT]"), "{err}");
        let err = resolve(&FILE.replace("89:da", "89:DA"), "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("fingerprint"), "{err}");
        let err = resolve("user=x\n", "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("before any [section]"), "{err}");
        let err = resolve("[DEFAULT\n", "DEFAULT").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn home_expansion() {
        let home = Some(Path::new("/h"));
        assert_eq!(expand_home(Path::new("~"), home), Path::new("/h"));
        assert_eq!(expand_home(Path::new("~/a/b"), home), Path::new("/h/a/b"));
        assert_eq!(expand_home(Path::new("/a/~"), home), Path::new("/a/~"));
        assert_eq!(expand_home(Path::new("~/a"), None), Path::new("~/a"));
    }

    #[test]
    fn keys_in_both_encodings_with_trailer_and_crlf() {
        let a = parse_key(PKCS8.as_bytes()).unwrap();
        let b = parse_key(PKCS1.as_bytes()).unwrap();
        assert_eq!(a.public().as_ref(), b.public().as_ref(), "the same key in PKCS#8 and PKCS#1");
        for text in [format!("{PKCS8}OCI_API_KEY\n"), PKCS8.replace('\n', "\r\n") + "OCI_API_KEY\r\n", PKCS1.replace('\n', "\r\n")] {
            let k = parse_key(text.as_bytes()).unwrap();
            assert_eq!(k.public().as_ref(), a.public().as_ref());
        }
    }

    #[test]
    fn bad_keys_are_explained() {
        let err = parse_key(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n").unwrap_err();
        assert!(err.contains("encrypted"), "{err}");
        let legacy = PKCS1.replace("-----BEGIN RSA PRIVATE KEY-----\n", "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n");
        assert!(parse_key(legacy.as_bytes()).unwrap_err().contains("encrypted"));
        assert!(parse_key(b"hello").unwrap_err().contains("no PEM block"));
        let public = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(parse_key(public.as_bytes()).unwrap_err().contains("PUBLIC KEY"));
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(parse_key(garbage.as_bytes()).unwrap_err().contains("not a usable RSA private key"));
    }

    #[test]
    fn key_file_errors_name_the_path() {
        let err = load_key(Path::new("/nonexistent/key.pem"), "profile [P] in /c").err().unwrap().to_string();
        assert!(err.contains("/nonexistent/key.pem") && err.contains("profile [P] in /c"), "{err}");
    }
}
