//! `${NAME}` and `${NAME:-default}` in configuration values: environment variables, expanded in
//! every string value of a config file before it is typed, so one config serves every pod
//! (`dir = "/var/log/shipped/${POD_NAME}"`, `timekey = "${TIMEKEY:-30s}"`).
//!
//! `${tag}` is left alone: it is fluentd's buffer placeholder, the same as `%{tag}`. A variable
//! that is not set and has no default is an error naming it, never an empty string: a key that
//! silently lost its job id would mix jobs. A default is taken as it is (not expanded again),
//! and so is a variable's value.

/// Why a value could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// `${NAME}` names a variable that is not set, and gives no default.
    #[error("environment variable {0} (written ${{{0}}}) is not set; set it, or give a default: ${{{0}:-value}}")]
    Missing(String),
    /// `${` without its `}`.
    #[error("unclosed ${{ at byte {0}")]
    Unclosed(usize),
}

/// Where a variable's value comes from: the process environment, or a stand-in (`translate`
/// checks a config it writes for another machine with stand-ins for what is not set here).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as a [`Lookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands the `${NAME}` and `${NAME:-default}` references in `s`.
pub fn expand(s: &str) -> Result<String, EnvError> {
    expand_with(s, &process_env)
}

/// Expands the `${NAME}` and `${NAME:-default}` references in `s`, taking values from `env`.
pub fn expand_with(s: &str, env: Lookup) -> Result<String, EnvError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(EnvError::Unclosed(s.len() - rest.len() + i));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if name == "tag" || !valid {
            out.push_str(&rest[i..i + 2 + end + 1]);
        } else {
            match (env(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(EnvError::Missing(name.to_string())),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands every string in `value` (tables and arrays included, keys left alone); an error
/// names the dotted key of the value that failed, e.g. `output[0].dir`.
pub fn expand_all(value: &mut toml::Value, key: &str) -> Result<(), (String, EnvError)> {
    expand_all_with(value, key, &process_env)
}

/// [`expand_all`] with the values from `env`.
pub fn expand_all_with(value: &mut toml::Value, key: &str, env: Lookup) -> Result<(), (String, EnvError)> {
    match value {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand_with(s, env).map_err(|e| (key.to_string(), e))?;
        }
        toml::Value::Array(items) => {
            let plain_list = items.iter().all(|v| !v.is_table());
            for (i, v) in items.iter_mut().enumerate() {
                // A list of values is one key (`source[0].paths`); a list of tables is indexed.
                let k = if plain_list {
                    key.to_string()
                } else {
                    format!("{key}[{i}]")
                };
                expand_all_with(v, &k, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let k = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                expand_all_with(v, &k, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_defaults_and_the_tag_placeholder() {
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand("x/${PATH}/${tag}").unwrap(), format!("x/{path}/${{tag}}"));
        assert_eq!(expand("${LOGSHIP_TEST_UNSET_VAR:-30s}").unwrap(), "30s");
        assert_eq!(expand("a${LOGSHIP_TEST_UNSET_VAR:-}b").unwrap(), "ab");
        assert_eq!(expand("${PATH:-other}").unwrap(), path);
        assert_eq!(
            expand("${LOGSHIP_TEST_UNSET_VAR}"),
            Err(EnvError::Missing("LOGSHIP_TEST_UNSET_VAR".into()))
        );
        assert_eq!(expand("ab${PATH"), Err(EnvError::Unclosed(2)));
        // Not a variable name: left as written.
        assert_eq!(expand("${1x} ${a-b}").unwrap(), "${1x} ${a-b}");
    }

    #[test]
    fn every_string_of_a_document_is_expanded_and_errors_name_the_key() {
        let mut v: toml::Value = toml::from_str(
            "[buffer]\ndir = \"/b/${PATH:-x}\"\n[[output]]\ndir = \"${LOGSHIP_TEST_UNSET_VAR:-/o}\"\n[[output]]\nkey_format = \"${LOGSHIP_TEST_UNSET_VAR}\"\n",
        )
        .unwrap();
        let e = expand_all(&mut v, "").unwrap_err();
        assert_eq!(e.0, "output[1].key_format");
        assert_eq!(v["output"][0]["dir"].as_str(), Some("/o"));
    }
}
