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

/// A translation written for another machine (`logship translate`): what the fluentd config
/// takes from the environment (`#{ENV['NAME']}`) stays a `${NAME}` reference in the TOML,
/// resolved when the config runs, on the pod that has the values.
#[derive(Debug)]
pub struct PortableTranslation {
    /// The config, with its references.
    pub translation: translate::Translation,
    /// The variables it refers to, sorted.
    pub variables: Vec<String>,
    /// Those of them that are not set here (checked with stand-in values).
    pub unset: Vec<String>,
}

/// Reads and translates a fluentd configuration file, keeping its environment references as
/// `${NAME}`. The heartbeat is `${SIDECAR_SIGNAL_FILE:-}` (watched where EMR sets it, none
/// elsewhere). The result is checked as it would run: with this machine's values where they
/// are set, and a stand-in (the lowercased name) where not.
pub fn translate_portable(path: &Path) -> Result<PortableTranslation, FluentdError> {
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let reference = |name: &str| {
        seen.borrow_mut().insert(name.to_string());
        Some(format!("${{{name}}}"))
    };
    let root = parse::parse_file(path, &reference)?;
    let heartbeat = crate::config::contract::SIDECAR_SIGNAL_FILE;
    let contract = |name: &str| (name == heartbeat).then(|| format!("${{{name}:-}}"));
    let mut translation = translate::translate_unchecked(&root, &contract)?;
    let app = format!("${{{}}}", crate::config::contract::SPARK_APPLICATION_ID);
    for s in &mut translation.config.sources {
        // The event-log source takes SPARK_APPLICATION_ID itself when no app_id is given.
        if let Some(spark) = s.spark.as_mut()
            && spark.app_id.as_deref() == Some(app.as_str())
        {
            spark.app_id = None;
        }
    }
    let variables: Vec<String> = seen.into_inner().into_iter().collect();
    let here = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let unset: Vec<String> = variables.iter().filter(|v| here(v).is_none()).cloned().collect();
    let standin = |name: &str| here(name).or_else(|| Some(name.to_ascii_lowercase().replace('_', "-")));
    let origin = path.display().to_string();
    crate::config::Config::parse_with_env(&translation.config.to_toml(), &origin, &standin).map_err(|e| {
        translate::TranslateError {
            pos: root.pos.clone(),
            message: if unset.is_empty() {
                format!("the translated config is not valid: {e}")
            } else {
                format!(
                    "the translated config is not valid with stand-in values for {} (not set here): {e}",
                    unset.join(", ")
                )
            },
        }
    })?;
    Ok(PortableTranslation {
        translation,
        variables,
        unset,
    })
}

/// EMR's image contract: `FLUENTD_CONF` names a file under `/etc/fluent` (the ConfigMap mount).
/// Returns it when the variable is set and the file exists.
pub fn emr_config_path() -> Option<PathBuf> {
    let name = std::env::var("FLUENTD_CONF").ok().filter(|v| !v.is_empty())?;
    let dir = std::env::var("LOGSHIP_FLUENTD_DIR").unwrap_or_else(|_| "/etc/fluent".to_string());
    let path = Path::new(&dir).join(name);
    path.is_file().then_some(path)
}
