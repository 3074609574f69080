//! Translation of a parsed fluentd configuration (as EMR on EKS generates it) into logship's
//! native [`Config`]. Plugins and parameters EMR uses are mapped; parameters whose effect logship
//! has anyway (or that are safe to ignore) give warnings; anything else is an error naming the
//! directive and its position. The full list is in `docs/fluentd.md`.

use std::path::{Path, PathBuf};

use super::parse::{Element, Pos};
use crate::config::StoreAs;
use crate::config::key::KeyTemplate;
use crate::config::{
    AppStatusMode, BufferConfig, CloudWatchSettings, Config, EventLogMode, FlushMode, LifecycleConfig, OutputConfig,
    OutputKind, ReadFrom, S3Settings, SourceConfig, SourceKind, SparkEventsConfig,
};
use crate::units::{ByteSize, HumanDuration};

/// Why a configuration cannot be translated.
#[derive(Debug, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct TranslateError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

/// The native config, and what was ignored on the way.
#[derive(Debug)]
pub struct Translation {
    /// The config (normalized and validated).
    pub config: Config,
    /// Directives and parameters that were ignored because logship does the same anyway or
    /// ignoring them is safe, with their positions.
    pub warnings: Vec<String>,
}

fn err<T>(pos: &Pos, message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError {
        pos: pos.clone(),
        message: message.into(),
    })
}

/// Parameters accepted everywhere and ignored: they concern fluentd itself.
const GLOBAL_IGNORED: &[&str] = &["@id", "@log_level", "log_level"];

/// Checks that every parameter of `el` is in `known` (mapped) or `ignored` (a warning).
fn check_params(
    el: &Element,
    known: &[&str],
    ignored: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(), TranslateError> {
    for p in &el.params {
        let k = p.key.as_str();
        if known.contains(&k) || GLOBAL_IGNORED.contains(&k) {
            continue;
        }
        if ignored.contains(&k) {
            warnings.push(format!("{}: <{}> {k}: ignored ({})", p.pos, el.name, why_ignored(k)));
            continue;
        }
        return err(
            &p.pos,
            format!(
                "<{} {}>: unsupported parameter {k:?} (see docs/fluentd.md for what is translated)",
                el.name, el.arg
            )
            .replace(" >", ">"),
        );
    }
    Ok(())
}

fn why_ignored(key: &str) -> &'static str {
    match key {
        "pos_file" | "pos_file_compaction_interval" => "logship keeps read positions in its buffer state",
        "check_bucket" | "check_apikey_on_start" | "check_object" | "overwrite" => {
            "logship never checks the bucket or object first, and its keys never collide"
        }
        "include_time_key" | "localtime" => "logship sends each line as it is, with its time as the event timestamp",
        "put_log_events_retry_limit" | "put_log_events_disable_retry_limit" | "put_log_events_retry_wait" => {
            "logship never drops a throttled batch; it follows the buffer's retry settings"
        }
        "disable_chunk_backup" => "logship keeps undeliverable chunks in the secondary directory",
        "output_to_console" => "the stdout output writes to logship's standard output",
        "retry_type" => "handled through retry_exponential_backoff_base",
        "workers" => "logship runs one pipeline",
        "@type" => "the buffer is logship's own file buffer",
        "path" => "logship's buffer directory is `logship` next to it",
        "flush_thread_count" | "flush_at_shutdown" => "logship always delivers everything at the drain",
        "emit_unmatched_lines" | "enable_stat_watcher" | "enable_watch_timer" | "follow_inodes" => {
            "logship follows files by inode with inotify and a safety poll"
        }
        _ => "no effect in logship",
    }
}

fn bool_param(el: &Element, key: &str) -> Result<Option<bool>, TranslateError> {
    match el.param(key) {
        None => Ok(None),
        Some(p) => match p.value.as_str() {
            "true" | "yes" => Ok(Some(true)),
            "false" | "no" => Ok(Some(false)),
            v => err(&p.pos, format!("{key}: expected true or false, got {v:?}")),
        },
    }
}

fn duration_param(el: &Element, key: &str) -> Result<Option<HumanDuration>, TranslateError> {
    match el.param(key) {
        None => Ok(None),
        Some(p) => p.value.parse::<HumanDuration>().map(Some).map_err(|e| TranslateError {
            pos: p.pos.clone(),
            message: format!("{key}: {e}"),
        }),
    }
}

fn size_param(el: &Element, key: &str) -> Result<Option<ByteSize>, TranslateError> {
    match el.param(key) {
        None => Ok(None),
        Some(p) => p.value.parse::<ByteSize>().map(Some).map_err(|e| TranslateError {
            pos: p.pos.clone(),
            message: format!("{key}: {e}"),
        }),
    }
}

fn number_param<T: std::str::FromStr>(el: &Element, key: &str) -> Result<Option<T>, TranslateError> {
    match el.param(key) {
        None => Ok(None),
        Some(p) => p.value.trim().parse::<T>().map(Some).map_err(|_| TranslateError {
            pos: p.pos.clone(),
            message: format!("{key}: expected a number, got {:?}", p.value),
        }),
    }
}

/// fluentd's tag patterns: `*` one part, `**` any parts, `{a,b}` alternatives, several patterns
/// separated by spaces.
pub fn tag_matches(pattern: &str, tag: &str) -> bool {
    pattern.split_whitespace().any(|p| {
        let alts = expand_braces(p);
        alts.iter()
            .any(|a| glob_parts(&a.split('.').collect::<Vec<_>>(), &tag.split('.').collect::<Vec<_>>()))
    })
}

fn expand_braces(p: &str) -> Vec<String> {
    match (p.find('{'), p.find('}')) {
        (Some(a), Some(b)) if a < b => p[a + 1..b]
            .split(',')
            .flat_map(|alt| expand_braces(&format!("{}{}{}", &p[..a], alt, &p[b + 1..])))
            .collect(),
        _ => vec![p.to_string()],
    }
}

fn glob_parts(pat: &[&str], tag: &[&str]) -> bool {
    match pat.split_first() {
        None => tag.is_empty(),
        Some((&"**", rest)) => (0..=tag.len()).any(|i| glob_parts(rest, &tag[i..])),
        Some((p, rest)) => match tag.split_first() {
            Some((t, trest)) => glob::Pattern::new(p).is_ok_and(|g| g.matches(t)) && glob_parts(rest, trest),
            None => false,
        },
    }
}

/// A `<source>` with where its events go.
struct Src<'a> {
    el: &'a Element,
    tag: String,
    label: Option<String>,
}

/// Translates the parsed configuration; `env` answers `#{ENV[...]}` and the pod contract's
/// variables (the heartbeat file). logship's buffer goes next to the first fluentd buffer path
/// (`<dir>/logship`), or the default when the config names none.
pub fn translate(root: &Element, env: &dyn Fn(&str) -> Option<String>) -> Result<Translation, TranslateError> {
    let t = translate_unchecked(root, env)?;
    t.config.validate().map_err(|e| TranslateError {
        pos: root.pos.clone(),
        message: format!("the translated config is not valid: {e}"),
    })?;
    Ok(t)
}

/// [`translate`] without the final check, for a config whose values are still `${NAME}`
/// references (checked by the caller once they have values).
pub fn translate_unchecked(
    root: &Element,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Translation, TranslateError> {
    let mut warnings = Vec::new();
    // Flatten <worker N> (logship runs one pipeline) and collect sources, labels and matches.
    let mut items: Vec<&Element> = Vec::new();
    for c in &root.children {
        match c.name.as_str() {
            "worker" => items.extend(c.children.iter()),
            "system" => check_params(
                c,
                &[],
                &["workers", "log_level", "root_dir", "suppress_config_dump"],
                &mut warnings,
            )?,
            _ => items.push(c),
        }
    }
    let mut sources = Vec::new();
    let mut labels: Vec<(&str, &Element)> = Vec::new();
    let mut top_matches: Vec<&Element> = Vec::new();
    for el in &items {
        match el.name.as_str() {
            "source" => {
                let tag = el.get("tag").unwrap_or("").to_string();
                sources.push(Src {
                    el,
                    tag,
                    label: el.get("@label").map(str::to_string),
                });
            }
            "label" => labels.push((el.arg.as_str(), el)),
            "match" => top_matches.push(el),
            "filter" => return err(&el.pos, "<filter> is not supported (logship ships lines as they are)"),
            "system" => {}
            other => return err(&el.pos, format!("unknown directive <{other}>")),
        }
    }
    if sources.is_empty() {
        return err(&root.pos, "no <source> in the configuration");
    }

    let mut t = Translator {
        warnings,
        outputs: Vec::new(),
        out_sources: Vec::new(),
        buffer: None,
        env,
    };
    let mut native_sources: Vec<SourceConfig> = Vec::new();
    let mut appstatus_prefixes: Vec<String> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let kind = s.el.get("@type").unwrap_or("");
        match kind {
            "tail" | "exec" => {}
            "" => return err(&s.el.pos, "<source> without @type"),
            other => {
                return err(
                    &s.el.param("@type").expect("set").pos,
                    format!("unknown source plugin {other:?}"),
                );
            }
        }
        let matches: Vec<&Element> = match &s.label {
            Some(l) => match labels.iter().find(|(name, _)| name == l) {
                Some((_, label)) => label.sections("match").collect(),
                None => return err(&s.el.param("@label").expect("set").pos, format!("no <label {l}>")),
            },
            None => top_matches.clone(),
        };
        let Some(m) = matches.into_iter().find(|m| tag_matches(&m.arg, &s.tag)) else {
            return err(
                &s.el.pos,
                format!("the events of this source (tag {:?}) match no <match>", s.tag),
            );
        };
        match kind {
            "tail" => {
                let src = t.tail(s, i, m)?;
                native_sources.push(src);
            }
            "exec" => {
                // EMR's appstatus source: `echo " "` into an output whose key is appstatus_<app>.
                check_params(
                    s.el,
                    &["@type", "tag", "@label", "command", "format", "run_interval"],
                    &[],
                    &mut t.warnings,
                )?;
                let cmd = s.el.get("command").unwrap_or("");
                let key = m.get("s3_object_key_format").unwrap_or("");
                if !cmd.trim().starts_with("echo") || !key.contains("appstatus_") {
                    return err(
                        &s.el.pos,
                        "<source @type exec> is supported only as EMR's appstatus marker (command echo, into an S3 key appstatus_<app>)",
                    );
                }
                appstatus_prefixes.push(m.get("path").unwrap_or("").to_string());
            }
            _ => unreachable!("checked above"),
        }
    }
    // EMR's appstatus source marks the event log complete at start: the event-log source does
    // that itself (appstatus = at_start), after its own discovery of the application.
    if !appstatus_prefixes.is_empty() {
        for s in &mut native_sources {
            if let Some(spark) = s.spark.as_mut() {
                spark.appstatus = AppStatusMode::AtStart;
            }
        }
        if !native_sources.iter().any(|s| s.kind == SourceKind::SparkEvents) {
            t.warnings
                .push("the appstatus exec source has no event-log source to go with; it is ignored".to_string());
        }
    }
    let buffer = t.buffer.clone().unwrap_or_default();
    let lifecycle = LifecycleConfig {
        heartbeat_file: (t.env)(crate::config::contract::SIDECAR_SIGNAL_FILE).map(PathBuf::from),
        ..LifecycleConfig::default()
    };
    let mut config = Config {
        buffer,
        sources: native_sources,
        outputs: t.outputs,
        lifecycle,
        metrics: Default::default(),
    };
    config.normalize();
    Ok(Translation {
        config,
        warnings: t.warnings,
    })
}

struct Translator<'a> {
    warnings: Vec<String>,
    outputs: Vec<OutputConfig>,
    /// The `<match>` each output came from (its position), to share one output between sources.
    out_sources: Vec<Pos>,
    buffer: Option<BufferConfig>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Translator<'_> {
    fn tail(&mut self, s: &Src, i: usize, m: &Element) -> Result<SourceConfig, TranslateError> {
        let el = s.el;
        check_params(
            el,
            &[
                "@type",
                "tag",
                "@label",
                "path",
                "read_from_head",
                "refresh_interval",
                "rotate_wait",
                "exclude_path",
            ],
            &[
                "pos_file",
                "pos_file_compaction_interval",
                "emit_unmatched_lines",
                "enable_stat_watcher",
                "enable_watch_timer",
                "follow_inodes",
            ],
            &mut self.warnings,
        )?;
        for c in &el.children {
            match c.name.as_str() {
                "parse" if matches!(c.get("@type"), Some("none") | None) => {}
                "parse" => {
                    return err(
                        &c.pos,
                        format!(
                            "<parse @type {}>: only `none` is supported (lines are shipped as they are)",
                            c.get("@type").unwrap_or("")
                        ),
                    );
                }
                other => return err(&c.pos, format!("unsupported section <{other}> in <source @type tail>")),
            }
        }
        let Some(path_param) = el.param("path") else {
            return err(&el.pos, "<source @type tail> needs `path`");
        };
        let paths: Vec<String> = path_param
            .value
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if paths.is_empty() {
            return err(&path_param.pos, "path is empty");
        }
        let read_from = if bool_param(el, "read_from_head")?.unwrap_or(false) {
            ReadFrom::Head
        } else {
            ReadFrom::End
        };
        let refresh = duration_param(el, "refresh_interval")?.unwrap_or(HumanDuration::secs(60));
        // Spark's single-file event log (`<dir>/<app>.inprogress`): the event-log source, which
        // also finds rolling and compressed logs that these paths cannot match.
        let event_log = paths.iter().any(|p| p.ends_with(".inprogress"));
        let output = self.output(m, event_log)?;
        let name = if s.tag.is_empty() {
            format!("source-{i}")
        } else {
            s.tag.clone()
        };
        let mut src = SourceConfig::new(&name, SourceKind::Tail, paths.clone());
        src.read_from = read_from;
        src.refresh_interval = refresh;
        src.rotate_wait = duration_param(el, "rotate_wait")?.unwrap_or(src.rotate_wait);
        src.tag = (!s.tag.is_empty()).then(|| s.tag.clone());
        src.outputs = vec![output];
        if event_log {
            let first = Path::new(&paths[0]);
            let dir = first.parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned();
            let app = first
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".inprogress"))
                .filter(|a| !a.is_empty() && !a.contains(['*', '?']))
                .map(str::to_string);
            src.kind = SourceKind::SparkEvents;
            src.paths = vec![dir];
            src.tag = None;
            src.read_from = ReadFrom::Head;
            src.spark = Some(SparkEventsConfig {
                mode: EventLogMode::Auto,
                appstatus: AppStatusMode::AtEnd,
                app_id: app,
                mirror_interval: None,
            });
        }
        Ok(src)
    }

    /// The output of a `<match>` (made once, shared by the sources that route to it).
    fn output(&mut self, m: &Element, event_log: bool) -> Result<String, TranslateError> {
        if let Some(i) = self.out_sources.iter().position(|p| *p == m.pos) {
            return Ok(self.outputs[i].name.clone());
        }
        let kind = m.get("@type").unwrap_or("");
        let name = format!(
            "{}-{}",
            if kind.is_empty() { "output" } else { kind },
            self.outputs.len()
        );
        let mut out = OutputConfig::new(&name, OutputKind::Stdout);
        match kind {
            "s3" => self.s3(m, &mut out, event_log)?,
            "cloudwatch_logs" => self.cloudwatch(m, &mut out)?,
            "stdout" => {
                check_params(m, &["@type", "format"], &["output_to_console"], &mut self.warnings)?;
                self.format(m)?;
            }
            "" => return err(&m.pos, "<match> without @type"),
            other => {
                return err(
                    &m.param("@type").expect("set").pos,
                    format!("unknown output plugin {other:?} (translated: s3, cloudwatch_logs, stdout)"),
                );
            }
        }
        for c in &m.children {
            match c.name.as_str() {
                "buffer" => self.buffer(c, &mut out)?,
                "secondary" => {
                    check_params(c, &["@type", "directory", "basename"], &[], &mut self.warnings)?;
                    if c.get("@type") != Some("secondary_file") {
                        return err(&c.pos, "<secondary>: only @type secondary_file is supported");
                    }
                    if let Some(d) = c.get("directory") {
                        out.secondary.directory = Some(PathBuf::from(d));
                    }
                    if let Some(b) = c.get("basename") {
                        out.secondary.basename = Some(b.to_string());
                    }
                }
                "refreshing_file_presigned_post" | "local_file_upload" | "format" if kind == "s3" => {}
                "format" => {}
                other => return err(&c.pos, format!("unsupported section <{other}> in <match @type {kind}>")),
            }
        }
        self.outputs.push(out);
        self.out_sources.push(m.pos.clone());
        Ok(name)
    }

    fn format(&mut self, m: &Element) -> Result<(), TranslateError> {
        let f = m
            .get("format")
            .or_else(|| m.sections("format").next().and_then(|f| f.get("@type")));
        match f {
            None | Some("single_value") => Ok(()),
            Some(other) => {
                let pos = m.param("format").map_or(m.pos.clone(), |p| p.pos.clone());
                err(
                    &pos,
                    format!("format {other:?}: only single_value is supported (each line is shipped as it is)"),
                )
            }
        }
    }

    fn s3(&mut self, m: &Element, out: &mut OutputConfig, event_log: bool) -> Result<(), TranslateError> {
        check_params(
            m,
            &[
                "@type",
                "s3_bucket",
                "s3_region",
                "path",
                "s3_object_key_format",
                "store_as",
                "storage_class",
                "format",
                "s3_endpoint",
                "force_path_style",
                "time_slice_format",
                "use_server_side_encryption",
                "ssekms_key_id",
            ],
            &["check_bucket", "check_apikey_on_start", "check_object", "overwrite"],
            &mut self.warnings,
        )?;
        self.format(m)?;
        let mut s3 = S3Settings {
            bucket: m.get("s3_bucket").map(str::to_string),
            region: m
                .get("s3_region")
                .map(str::to_string)
                .or_else(|| (self.env)("AWS_REGION")),
            endpoint: m.get("s3_endpoint").map(str::to_string),
            force_path_style: bool_param(m, "force_path_style")?.unwrap_or(false),
            storage_class: m.get("storage_class").map(str::to_string),
            sse: m.get("use_server_side_encryption").map(str::to_string),
            sse_kms_key_id: m.get("ssekms_key_id").map(str::to_string),
            ..Default::default()
        };
        if let Some(p) = m.param("store_as") {
            s3.store_as = StoreAs::parse(&p.value).ok_or_else(|| TranslateError {
                pos: p.pos.clone(),
                message: format!("store_as {:?}: supported are text, gzip, zstd", p.value),
            })?;
        }
        out.path = m.get("path").unwrap_or("").to_string();
        let key_param = m.param("s3_object_key_format");
        let mut key = key_param
            .map_or("%{path}%{time_slice}_%{index}.%{file_extension}", |p| p.value.as_str())
            .to_string();
        if let Some(f) = m.get("time_slice_format") {
            out.time_slice_format = Some(f.to_string());
        }
        if let Some(pp) = m.sections("refreshing_file_presigned_post").next() {
            check_params(pp, &["presigned_post_path"], &[], &mut self.warnings)?;
            let Some(path) = pp.get("presigned_post_path") else {
                return err(&pp.pos, "<refreshing_file_presigned_post> needs presigned_post_path");
            };
            s3.presigned_post = Some(PathBuf::from(path));
        }
        if let Some(l) = m.sections("local_file_upload").next() {
            check_params(l, &["file_path"], &[], &mut self.warnings)?;
            self.warnings.push(format!(
                "{}: <local_file_upload>: EMR re-uploads the whole file to one key at each flush; logship ships the lines once, in chunks whose keys get an index (%{{path}}/<name>.%{{index}}.<ext>)",
                l.pos
            ));
            // One object per chunk, never overwriting an earlier one.
            if !key.contains("%{index}") {
                key = match key.rsplit_once('.') {
                    Some((stem, ext)) if !stem.ends_with('}') || stem.contains('/') => {
                        format!("{stem}.%{{index}}.{ext}")
                    }
                    _ => format!("{key}.%{{index}}"),
                };
            }
        }
        let random = key.contains("%{hex_random}") || key.contains("%{uuid_flush}");
        if s3.presigned_post.is_some() && !event_log && !random {
            // A presigned POST cannot look whether a key is taken (fluentd would overwrite a
            // restarted container's objects): a random part keeps runs apart.
            key = if key.contains("%{index}") {
                key.replacen("%{index}", "%{index}_%{hex_random}", 1)
            } else {
                format!("{key}_%{{hex_random}}")
            };
            self.warnings.push(format!(
                "{}: s3_object_key_format: a presigned POST cannot see existing objects, so logship adds %{{hex_random}} to keep a later run from overwriting this one's objects ({key})",
                m.pos
            ));
        }
        if !out.path.is_empty() && !event_log && !key.contains("%{path}") {
            // fluent-plugin-s3 ignores a path its key format does not use; logship refuses
            // such a config, so the translation leaves the unused path out and says so.
            self.warnings.push(format!(
                "{}: path {:?} is not used by s3_object_key_format ({key}): left out",
                m.pos, out.path
            ));
            out.path.clear();
        }
        out.key_format = KeyTemplate::parse(&key).map_err(|e| TranslateError {
            pos: key_param.map_or_else(|| m.pos.clone(), |p| p.pos.clone()),
            message: format!("s3_object_key_format {key:?}: {e}"),
        })?;
        if event_log {
            // EMR: path ".../sparklogs/eventlog_v2_<app>", key "%{path}/events_%{index}_<app>".
            // The event-log source names the objects itself below the prefix ".../sparklogs".
            let p = out.path.trim_end_matches('/');
            let prefix = match p.rsplit_once('/') {
                Some((head, last)) if last.starts_with("eventlog_v2_") => head.to_string(),
                None if p.starts_with("eventlog_v2_") => String::new(),
                _ => p.to_string(),
            };
            out.path = prefix;
            s3.store_as = StoreAs::Text;
        }
        out.kind = OutputKind::S3(Box::new(s3));
        Ok(())
    }

    fn cloudwatch(&mut self, m: &Element, out: &mut OutputConfig) -> Result<(), TranslateError> {
        check_params(
            m,
            &[
                "@type",
                "log_group_name",
                "log_stream_name",
                "auto_create_stream",
                "retention_in_days",
                "region",
                "endpoint",
                "max_message_length",
                "max_events_per_batch",
            ],
            &[
                "include_time_key",
                "localtime",
                "put_log_events_retry_limit",
                "put_log_events_disable_retry_limit",
                "put_log_events_retry_wait",
                "log_rejected_request",
                "concurrency",
                "message_keys",
            ],
            &mut self.warnings,
        )?;
        let Some(group) = m.get("log_group_name") else {
            return err(&m.pos, "<match @type cloudwatch_logs> needs log_group_name");
        };
        let Some(stream) = m.get("log_stream_name") else {
            return err(&m.pos, "<match @type cloudwatch_logs> needs log_stream_name");
        };
        out.kind = OutputKind::Cloudwatch(Box::new(CloudWatchSettings {
            log_group: group.to_string(),
            log_stream: stream.to_string(),
            auto_create: bool_param(m, "auto_create_stream")?.unwrap_or(false),
            retention_days: number_param(m, "retention_in_days")?,
            region: m.get("region").map(str::to_string).or_else(|| (self.env)("AWS_REGION")),
            endpoint: m.get("endpoint").map(str::to_string),
            ..Default::default()
        }));
        Ok(())
    }

    fn buffer(&mut self, b: &Element, out: &mut OutputConfig) -> Result<(), TranslateError> {
        check_params(
            b,
            &[
                "timekey",
                "timekey_wait",
                "chunk_limit_size",
                "flush_mode",
                "flush_interval",
                "retry_timeout",
                "retry_wait",
                "retry_exponential_backoff_base",
                "retry_max_interval",
                "retry_randomize",
                "retry_max_times",
                "total_limit_size",
                "retry_forever",
            ],
            &[
                "@type",
                "path",
                "flush_at_shutdown",
                "disable_chunk_backup",
                "retry_type",
                "flush_thread_count",
            ],
            &mut self.warnings,
        )?;
        if bool_param(b, "flush_at_shutdown")? == Some(false) {
            self.warnings.push(format!(
                "{}: flush_at_shutdown false: logship always delivers everything at the drain",
                b.pos
            ));
        }
        let r = &mut out.retry;
        if let Some(v) = duration_param(b, "retry_wait")? {
            r.wait = v;
        }
        if let Some(v) = number_param::<f32>(b, "retry_exponential_backoff_base")? {
            r.exponential_base = v;
        }
        if b.get("retry_type") == Some("periodic") {
            r.exponential_base = 1.0;
        }
        if let Some(v) = duration_param(b, "retry_max_interval")? {
            r.max_interval = v;
        }
        if let Some(v) = bool_param(b, "retry_randomize")? {
            r.randomize = v;
        }
        if let Some(v) = number_param::<usize>(b, "retry_max_times")? {
            r.max_times = v;
        }
        if let Some(v) = duration_param(b, "retry_timeout")? {
            r.timeout = v;
        }
        if bool_param(b, "retry_forever")? == Some(true) {
            r.max_times = usize::MAX;
            r.timeout = HumanDuration::secs(100 * 365 * 24 * 3600);
        }
        // logship has one buffer for all outputs: the first <buffer> sets it; a later one that
        // would seal chunks sooner makes it seal sooner (never later than any match asked).
        let mut nb = BufferConfig::default();
        if let Some(p) = b.get("path") {
            let dir = Path::new(p).parent().unwrap_or(Path::new("/tmp"));
            nb.dir = dir.join("logship");
        }
        let timekey = duration_param(b, "timekey")?;
        let interval = duration_param(b, "flush_interval")?;
        let mode = match b.get("flush_mode") {
            Some("lazy") => Some(FlushMode::Lazy),
            Some("interval") => Some(FlushMode::Interval),
            Some("immediate") => Some(FlushMode::Immediate),
            Some("default") | None => None,
            Some(other) => {
                return err(
                    &b.param("flush_mode").expect("set").pos,
                    format!("flush_mode {other:?}: lazy, interval, immediate or default"),
                );
            }
        };
        let chunk_limit = size_param(b, "chunk_limit_size")?;
        let total_limit = size_param(b, "total_limit_size")?;
        let merged = match self.buffer.take() {
            None => {
                if let Some(t) = timekey {
                    nb.timekey = t;
                }
                if let Some(w) = duration_param(b, "timekey_wait")? {
                    nb.timekey_wait = w;
                }
                if let Some(i) = interval {
                    nb.flush_interval = i;
                }
                nb.flush_mode = match (mode, timekey, interval) {
                    (Some(m), _, _) => m,
                    (None, Some(_), _) => FlushMode::Lazy,
                    (None, None, Some(_)) => FlushMode::Interval,
                    (None, None, None) => FlushMode::Lazy,
                };
                if nb.flush_mode == FlushMode::Immediate {
                    // Only EMR's one-line appstatus output flushes immediately; it is folded into
                    // the event-log source. Keep the time-key behaviour for the rest.
                    nb.flush_mode = FlushMode::Lazy;
                }
                if let Some(c) = chunk_limit {
                    nb.chunk_limit = c;
                }
                if let Some(t) = total_limit {
                    nb.total_limit = t.max(nb.chunk_limit);
                }
                nb
            }
            Some(mut cur) => {
                let seal_every = |m: FlushMode, c: &BufferConfig| match m {
                    FlushMode::Interval => c.flush_interval.get(),
                    _ => c.timekey.get() + c.timekey_wait.get(),
                };
                let mine = match (mode, interval, timekey) {
                    (Some(FlushMode::Interval), Some(i), _) | (None, Some(i), None) => Some(i.get()),
                    (_, _, Some(t)) => Some(t.get()),
                    _ => None,
                };
                if let Some(d) = mine
                    && d < seal_every(cur.flush_mode, &cur)
                {
                    self.warnings.push(format!(
                        "{}: logship has one buffer: chunks of every output are now sealed every {}s (the shortest any <buffer> asks for)",
                        b.pos,
                        d.as_secs()
                    ));
                    cur.flush_mode = FlushMode::Interval;
                    cur.flush_interval = HumanDuration(d);
                }
                if let Some(c) = chunk_limit
                    && c < cur.chunk_limit
                {
                    cur.chunk_limit = c.max(ByteSize(1 << 20));
                }
                cur
            }
        };
        self.buffer = Some(merged);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_patterns() {
        assert!(tag_matches(
            "emr-containers-spark-s3-event-logs",
            "emr-containers-spark-s3-event-logs"
        ));
        assert!(tag_matches("a.*", "a.b"));
        assert!(!tag_matches("a.*", "a.b.c"));
        assert!(tag_matches("a.**", "a.b.c"));
        assert!(tag_matches("**", "x"));
        assert!(tag_matches("{x,y}.z", "y.z"));
        assert!(tag_matches("p q", "q"));
        assert!(!tag_matches("a", "b"));
    }
}
