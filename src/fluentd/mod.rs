//! Drop-in for EMR's fluentd image: fluentd's configuration syntax (`parse`) and its translation
//! into logship's native config (`translate`). See docs/fluentd.md.

pub mod parse;
pub mod translate;

use std::path::{Path, PathBuf};

/// Why a fluentd configuration cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum FluentdError {
    /// Syntax.
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    /// Meaning.
    #[error(transparent)]
    Translate(#[from] translate::TranslateError),
}

/// Reads, parses and translates a fluentd configuration file with the process environment.
pub fn load(path: &Path) -> Result<translate::Translation, FluentdError> {
    let env = |name: &str| std::env::var(name).ok();
    let root = parse::parse_file(path, &env)?;
    Ok(translate::translate(&root, &env)?)
}

/// EMR's image contract: `FLUENTD_CONF` names a file under `/etc/fluent` (the ConfigMap mount).
/// Returns it when the variable is set and the file exists.
pub fn emr_config_path() -> Option<PathBuf> {
    let name = std::env::var("FLUENTD_CONF").ok().filter(|v| !v.is_empty())?;
    let dir = std::env::var("LOGSHIP_FLUENTD_DIR").unwrap_or_else(|_| "/etc/fluent".to_string());
    let path = Path::new(&dir).join(name);
    path.is_file().then_some(path)
}
