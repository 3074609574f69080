//! The webhook's kustomize base and overlays, rendered with `kubectl kustomize` (kustomize 5.5 in
//! kubectl 1.32) and every object parsed with the typed Kubernetes model: what an operator applies
//! is well-formed, highly available, hardened and selects only opted-in Spark pods.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn render(overlay: &str) -> Vec<Value> {
    use serde::Deserialize;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kustomize/overlays")
        .join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (with kustomize) is on the machine");
    assert!(
        out.status.success(),
        "{overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_path_to_error::deserialize(v).unwrap_or_else(|e| panic!("{} at {}: {v}", e.inner(), e.path()))
}

#[test]
fn both_overlays_render_objects_the_api_server_accepts_and_the_webhook_is_ha_hardened_and_opt_in() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    for overlay in ["cert-manager", "self-managed"] {
        let docs = render(overlay);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        let mut seen = std::collections::BTreeSet::new();
        for d in &docs {
            let kind = d["kind"].as_str().unwrap();
            seen.insert(kind);
            assert_eq!(
                d["metadata"]["labels"]["app.kubernetes.io/name"], "logship-inject",
                "{overlay}: {kind}"
            );
            match kind {
                "Namespace" => drop(typed::<Namespace>(d)),
                "ServiceAccount" => {
                    let sa: ServiceAccount = typed(d);
                    assert_eq!(sa.automount_service_account_token, Some(false));
                }
                "Service" => drop(typed::<Service>(d)),
                "PodDisruptionBudget" => {
                    let pdb: PodDisruptionBudget = typed(d);
                    let spec = pdb.spec.unwrap();
                    assert!(spec.min_available.is_some() || spec.max_unavailable.is_some());
                }
                "Deployment" => {
                    let dep: Deployment = typed(d);
                    let spec = dep.spec;
                    assert_eq!(spec.replicas, Some(2), "{overlay}");
                    let pod = spec.template.spec.unwrap();
                    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
                    assert_eq!(
                        anti.required_during_scheduling_ignored_during_execution.unwrap()[0].topology_key,
                        "kubernetes.io/hostname"
                    );
                    let psc = pod.security_context.unwrap();
                    assert_eq!(psc.run_as_non_root, Some(true));
                    let c = &pod.containers[0];
                    let sc = c.security_context.as_ref().unwrap();
                    assert_eq!(sc.read_only_root_filesystem, Some(true));
                    assert_eq!(sc.allow_privilege_escalation, Some(false));
                    assert_eq!(
                        sc.capabilities.as_ref().unwrap().drop.as_deref(),
                        Some(&["ALL".to_string()][..])
                    );
                    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
                    assert!(
                        c.resources
                            .as_ref()
                            .unwrap()
                            .limits
                            .as_ref()
                            .unwrap()
                            .contains_key("memory")
                    );
                }
                "MutatingWebhookConfiguration" => {
                    let m: MutatingWebhookConfiguration = typed(d);
                    let w = &m.webhooks.unwrap()[0];
                    assert_eq!(w.side_effects, "None");
                    assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
                    assert_eq!(w.timeout_seconds, Some(5));
                    assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
                    let ns = w.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
                    assert_eq!(ns.get("logship.io/inject").map(String::as_str), Some("enabled"));
                    let obj = &w.object_selector.as_ref().unwrap().match_expressions.as_ref().unwrap()[0];
                    assert_eq!(obj.key, "spark-role");
                    let svc = w.client_config.service.as_ref().unwrap();
                    assert_eq!(
                        (svc.name.as_str(), svc.namespace.as_str(), svc.path.as_deref()),
                        ("logship-inject", "logship-system", Some("/mutate"))
                    );
                    match overlay {
                        "cert-manager" => assert_eq!(
                            m.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
                            "logship-system/logship-inject"
                        ),
                        _ => assert!(w.client_config.ca_bundle.is_some(), "{overlay}: the CA bundle is set"),
                    }
                }
                "Issuer" | "Certificate" => {
                    assert_eq!(overlay, "cert-manager");
                    assert_eq!(d["apiVersion"], "cert-manager.io/v1");
                    if kind == "Certificate" {
                        assert_eq!(d["spec"]["secretName"], "logship-inject-tls");
                        assert_eq!(d["spec"]["dnsNames"][0], "logship-inject.logship-system.svc");
                    }
                }
                other => panic!("{overlay}: unexpected {other}"),
            }
        }
        for kind in [
            "Namespace",
            "ServiceAccount",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "MutatingWebhookConfiguration",
        ] {
            assert!(seen.contains(kind), "{overlay}: no {kind} in {kinds:?}");
        }
        // Everything but the cluster-scoped objects is in the webhook's namespace.
        for d in docs
            .iter()
            .filter(|d| !["Namespace", "MutatingWebhookConfiguration"].contains(&d["kind"].as_str().unwrap()))
        {
            assert_eq!(d["metadata"]["namespace"], "logship-system", "{overlay}: {}", d["kind"]);
        }
    }
}
