//! The `logship-inject` command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use logship_inject::configmap::{ConfigMapRequest, configmap, spark_container_name};
use logship_inject::document::{self, Format};
use logship_inject::operator::{self, Resource};
use logship_inject::options::{EventLogLayout, Role, SidecarOptions};
use logship_inject::patch::{Target, inject};
use logship_inject::spark_conf::{SparkConf, as_properties, as_submit_args, spark_conf};
use logship_inject::webhook::{OnError, Webhook, WebhookConfig};

/// Adds the logship sidecar to Spark pod templates and pods: event logs and container logs
/// shipped to S3 or CloudWatch Logs by a few-MiB sidecar that drains before the pod ends.
#[derive(Parser, Debug)]
#[command(name = "logship-inject", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a pod template, or a Spark Operator SparkApplication, with the sidecar added (YAML,
    /// or JSON with --output json). Notes (what was changed beyond the sidecar) go to stderr.
    Template {
        /// driver or executor: the role of a pod template. Not for a SparkApplication, which
        /// holds both roles (both are patched).
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// The template or resources to patch (default: stdin; an empty input is an empty pod).
        /// Several YAML documents: Pods, Kubeflow `SparkApplication` / `ScheduledSparkApplication`
        /// and the Apache operator's `SparkApplication` are patched, the others pass through.
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
        #[command(flatten)]
        sidecar: SidecarOptions,
    },
    /// Print the Spark settings that go with the templates (`--conf k=v` lines, or
    /// spark-defaults.conf lines with --properties).
    SparkConf {
        /// The driver template as spark-submit will read it.
        #[arg(long, default_value = "driver-pod-template.yaml")]
        driver_template: String,
        /// The executor template.
        #[arg(long, default_value = "executor-pod-template.yaml")]
        executor_template: String,
        /// The driver template's Spark container.
        #[arg(long, default_value = "spark-kubernetes-driver")]
        driver_container: String,
        /// The executor template's Spark container.
        #[arg(long, default_value = "spark-kubernetes-executor")]
        executor_container: String,
        /// The event-log directory in the driver pod.
        #[arg(long, default_value = "/var/log/spark/apps")]
        event_log_dir: PathBuf,
        /// How Spark writes event logs.
        #[arg(long, value_enum, default_value_t)]
        event_logs: EventLogLayout,
        /// spark-defaults.conf format.
        #[arg(long)]
        properties: bool,
        /// The sidecar's --to: adds the executors' log links to where it puts their logs
        /// (spark.ui.custom.executor.log.url; see `template --log-url`).
        #[arg(long)]
        to: Option<String>,
        /// The AWS region of --to, for the console links.
        #[arg(long)]
        region: Option<String>,
        /// The log-link pattern (as `template --log-url`); `none` for no links.
        #[arg(long, value_name = "PATTERN")]
        log_url: Option<String>,
    },
    /// Print a ConfigMap holding the patched driver and executor templates, each role's
    /// sidecar config (which the templates mount from it) and a matching spark-defaults.conf.
    Configmap {
        /// The ConfigMap's name.
        #[arg(long)]
        name: String,
        /// Its namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// The driver template to patch (default: an empty pod).
        #[arg(long, value_name = "FILE")]
        driver_in: Option<PathBuf>,
        /// The executor template to patch.
        #[arg(long, value_name = "FILE")]
        executor_in: Option<PathBuf>,
        /// Where the submitter mounts this ConfigMap (template paths in spark-defaults.conf).
        #[arg(long, default_value = "/opt/spark/pod-templates")]
        mount_dir: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
        #[command(flatten)]
        sidecar: SidecarOptions,
    },
    /// Serve a mutating admission webhook (AdmissionReview v1 on POST /mutate, health on
    /// GET /healthz) over HTTPS until SIGTERM.
    Webhook {
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// PEM certificate chain (re-read when it changes).
        #[arg(long)]
        tls_cert: PathBuf,
        /// PEM private key.
        #[arg(long)]
        tls_key: PathBuf,
        /// When a pod that asked for the sidecar cannot get it: deny it (with the reason) or
        /// allow it unchanged (with a warning).
        #[arg(long, value_enum, default_value_t)]
        on_error: OnError,
        #[command(flatten)]
        sidecar: SidecarOptions,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs on stderr: text (colours only on a terminal), or JSON lines with LOGSHIP_LOG_FORMAT=json.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOGSHIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var("LOGSHIP_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logship-inject: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn read_input(path: Option<&PathBuf>) -> Result<(String, String)> {
    match path {
        Some(p) => Ok((
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        )),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read stdin")?;
            Ok((s, "stdin".into()))
        }
    }
}

fn note(notes: &[String]) {
    for n in notes {
        eprintln!("logship-inject: note: {n}");
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Template {
            role,
            input,
            output,
            sidecar,
        } => {
            let (text, origin) = read_input(input.as_ref())?;
            let docs = document::parse_all(&text, &origin)?;
            let several = docs.len() > 1;
            let mut out = Vec::new();
            let mut patched = 0;
            for (i, mut doc) in docs.into_iter().enumerate() {
                let what = if several {
                    format!("{origin} (document {})", i + 1)
                } else {
                    origin.clone()
                };
                match Resource::of(&doc) {
                    Resource::Pod => {
                        let Some(role) = role else {
                            bail!("{what}: a pod template is one role: give --role driver or --role executor");
                        };
                        note(&document::validate(&doc, &what)?);
                        let notes = inject(&mut doc, role, &sidecar, Target::Template).with_context(|| what.clone())?;
                        note(&notes);
                        eprintln!(
                            "logship-inject: Spark container: {} (set spark.kubernetes.{}.podTemplateContainerName to it)",
                            spark_container_name(&doc, &sidecar, role),
                            role.label()
                        );
                        patched += 1;
                    }
                    Resource::Other(kind) if !several => {
                        bail!("{what}: not a Pod, SparkApplication or ScheduledSparkApplication (kind: {kind})");
                    }
                    Resource::Other(_) => {}
                    resource => {
                        if let Some(role) = role {
                            bail!(
                                "{what}: --role {} does not apply: a {} holds both roles, and both are patched",
                                role.label(),
                                doc["kind"].as_str().unwrap_or_default()
                            );
                        }
                        let notes =
                            operator::inject_resource(&mut doc, &resource, &sidecar).with_context(|| what.clone())?;
                        note(&notes);
                        patched += 1;
                    }
                }
                out.push(doc);
            }
            if patched == 0 {
                bail!("{origin}: no Pod, SparkApplication or ScheduledSparkApplication to patch");
            }
            print!("{}", document::print_all(&out, output));
            Ok(())
        }
        Command::SparkConf {
            driver_template,
            executor_template,
            driver_container,
            executor_container,
            event_log_dir,
            event_logs,
            properties,
            to,
            region,
            log_url,
        } => {
            let pattern =
                logship_inject::log_links::pattern_for(to.as_deref(), region.as_deref(), false, log_url.as_deref())?;
            let conf = spark_conf(&SparkConf {
                driver_template: &driver_template,
                executor_template: &executor_template,
                driver_container: &driver_container,
                executor_container: &executor_container,
                event_log_dir: &event_log_dir,
                layout: event_logs,
                log_url: pattern.as_deref(),
            });
            print!(
                "{}",
                if properties {
                    as_properties(&conf)
                } else {
                    as_submit_args(&conf)
                }
            );
            Ok(())
        }
        Command::Configmap {
            name,
            namespace,
            driver_in,
            executor_in,
            mount_dir,
            output,
            sidecar,
        } => {
            let driver = driver_in.as_ref().map(|p| read_input(Some(p))).transpose()?;
            let executor = executor_in.as_ref().map(|p| read_input(Some(p))).transpose()?;
            let (cm, notes) = configmap(&ConfigMapRequest {
                name,
                namespace,
                driver,
                executor,
                mount_dir,
                options: sidecar,
            })?;
            note(&notes);
            print!("{}", document::print(&cm, output));
            Ok(())
        }
        Command::Webhook {
            listen,
            tls_cert,
            tls_key,
            on_error,
            sidecar,
        } => {
            // The options are checked once at start, so a typo fails the Deployment, not pods.
            logship_inject::sidecar::config_toml(&sidecar, Role::Driver)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            rt.block_on(async {
                let hook = Webhook::bind(WebhookConfig {
                    listen,
                    cert: tls_cert,
                    key: tls_key,
                    options: sidecar,
                    on_error,
                })
                .await?;
                tracing::info!(addr = %hook.local_addr()?, "serving AdmissionReviews on /mutate");
                hook.serve(shutdown()).await;
                tracing::info!("stopped");
                Ok(())
            })
        }
    }
}

/// SIGTERM (the kubelet) or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn the_example_deployment_passes_arguments_the_webhook_accepts() {
        use clap::Parser;
        let text = include_str!("../deploy/kustomize/base/deployment.yaml");
        let mut found = false;
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if v["kind"] != "Deployment" {
                continue;
            }
            let args: Vec<&str> = v["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let cli = super::Cli::try_parse_from(std::iter::once("logship-inject").chain(args)).unwrap();
            assert!(matches!(cli.command, super::Command::Webhook { .. }));
            found = true;
        }
        assert!(found);
    }
}
