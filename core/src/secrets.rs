//! Credentials: read from `<NAME>_FILE` (a mounted Secret) when `<NAME>` is not set, and kept
//! out of logs.

/// Settings that may carry credentials. Each can also come from a file named by `<NAME>_FILE`
/// (a mounted Secret), so that it appears neither on the command line nor in the pod spec.
pub const SECRET_SETTINGS: &[&str] = &["REDIS_URL", "DATABASE_URL", "VERIFY_DATABASE_URL", "KAFKA_BROKERS", "JWT_SECRET"];

/// A `<NAME>_FILE` that names a file which cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}_FILE={path}: {reason}")]
pub struct SecretFileError {
    pub name: String,
    pub path: String,
    pub reason: String,
}

/// The value of `name`: the variable itself, else the trimmed content of the file named by
/// `<name>_FILE`.
pub fn setting_from_env_or_file(name: &str, env: impl Fn(&str) -> Option<String>) -> Result<Option<String>, SecretFileError> {
    if let Some(value) = env(name) {
        return Ok(Some(value));
    }
    match env(&format!("{name}_FILE")) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(&path).map(|text| Some(text.trim().to_owned())).map_err(|e| SecretFileError {
            name: name.to_owned(),
            path,
            reason: e.to_string(),
        }),
    }
}

/// Resolves every `<NAME>_FILE` of `SECRET_SETTINGS` into `<NAME>`. Call first thing in
/// `main`, before any thread starts (it sets environment variables).
pub fn load_secret_files() -> Result<(), SecretFileError> {
    for name in SECRET_SETTINGS {
        if std::env::var_os(name).is_none() {
            if let Some(value) = setting_from_env_or_file(name, |n| std::env::var(n).ok())? {
                std::env::set_var(name, value);
            }
        }
    }
    Ok(())
}

/// Hides the secrets of a URL before it is logged: the password of its user-info part, and
/// the values of query parameters that carry one (`?password=`, `sslpassword=`, a `token` or
/// a `secret`), which several drivers take there.
pub fn redact_url(url: &str) -> String {
    // The query starts after the authority: a '?' in a password is not one.
    let authority_end = url.rfind('@').map_or(0, |at| at + 1);
    let (base, query) = match url[authority_end..].find('?') {
        Some(at) => (&url[..authority_end + at], Some(&url[authority_end + at + 1..])),
        None => (url, None),
    };
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &base[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &base[..scheme_end + 3], user, &base[at..])
        }
        _ => base.to_owned(),
    };
    let Some(query) = query else { return base };
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _)) if secret_parameter(name) => format!("{name}=***"),
            _ => parameter.to_owned(),
        })
        .collect();
    format!("{base}?{}", parameters.join("&"))
}

/// A query parameter whose value is a credential.
fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password") || name.contains("secret") || name.contains("token") || matches!(name.as_str(), "pass" | "pwd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_comes_from_the_variable_or_from_its_file() {
        let dir = std::env::temp_dir().join(format!("coupon-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("redis-url");
        std::fs::write(&file, "redis://:pw@redis:6379\n").unwrap();
        let path = file.display().to_string();
        let env = |vars: Vec<(&'static str, String)>| move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        assert_eq!(
            setting_from_env_or_file("REDIS_URL", env(vec![("REDIS_URL_FILE", path.clone())])),
            Ok(Some("redis://:pw@redis:6379".into()))
        );
        assert_eq!(
            setting_from_env_or_file("REDIS_URL", env(vec![("REDIS_URL", "direct".into()), ("REDIS_URL_FILE", path)])),
            Ok(Some("direct".into()))
        );
        assert_eq!(setting_from_env_or_file("REDIS_URL", env(vec![])), Ok(None));
        assert!(setting_from_env_or_file("REDIS_URL", env(vec![("REDIS_URL_FILE", "/nonexistent/x".into())]))
            .unwrap_err()
            .to_string()
            .contains("REDIS_URL_FILE"));
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("redis://:s3cret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("postgres://app:pw@db/x"), "postgres://app:***@db/x");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("sqlite://coupons.db"), "sqlite://coupons.db");
        assert_eq!(
            redact_url("postgres://db/x?sslmode=verify-full&sslpassword=k3y&user=app&password=pw"),
            "postgres://db/x?sslmode=verify-full&sslpassword=***&user=app&password=***"
        );
        assert_eq!(redact_url("mysql://app:pw@db/x?ssl-mode=REQUIRED&Password=pw"), "mysql://app:***@db/x?ssl-mode=REQUIRED&Password=***");
        assert_eq!(redact_url("redis://host:6379/0?token=t&protocol=resp3"), "redis://host:6379/0?token=***&protocol=resp3");
        assert_eq!(redact_url("redis://:pa?ss@host:6379"), "redis://:***@host:6379", "a '?' in a password is not a query");
    }
}
