//! deploy/: what can be checked here is checked — the systemd unit with `systemd-analyze verify`,
//! the Kubernetes manifests as YAML with the fields operations relies on, the container file's
//! shape (multi-stage, non-root, no build tools in the final image).

use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string("deploy/systemd/registerbrygga.service").unwrap();
    // Verify against the binary this test run built (the unit names the installed path).
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("registerbrygga.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/registerbrygga", env!("CARGO_BIN_EXE_registerbrygga"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze is installed (.ci/run installs systemd)");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        // The service user exists only on a real installation.
        .filter(|l| !l.contains("User=registerbrygga") && !l.contains("Group=registerbrygga"))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{text}");
    for must in ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=registerbrygga", "Restart=on-failure", "KillSignal=SIGTERM"] {
        assert!(unit.contains(must), "unit lacks {must}");
    }
}

fn docs(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(format!("deploy/kubernetes/{file}")).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

#[test]
fn kubernetes_manifests_are_valid_and_complete() {
    let mut kinds = vec![];
    for entry in std::fs::read_dir("deploy/kubernetes").unwrap() {
        let p = entry.unwrap().path();
        for d in docs(p.file_name().unwrap().to_str().unwrap()) {
            for key in ["apiVersion", "kind", "metadata"] {
                assert!(d.get(key).is_some(), "{}: a document lacks {key}", p.display());
            }
            kinds.push(d["kind"].as_str().unwrap().to_string());
        }
    }
    for k in ["Deployment", "PodDisruptionBudget", "Secret", "ConfigMap", "Service", "StatefulSet"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} manifest");
    }
    let dep = &docs("deployment.yaml")[0];
    assert_eq!(dep["spec"]["replicas"].as_i64(), Some(2));
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    let pdb = &docs("pdb.yaml")[0];
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    // The Secret example holds exactly the files the runbook and production config name.
    let secret = &docs("secret.example.yaml")[0];
    let keys: Vec<&str> = secret["stringData"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
    let prod = std::fs::read_to_string("config/production.toml").unwrap();
    for k in &keys {
        if !k.starts_with("admin-tls") && *k != "sar-apikey" && *k != "admin-password" {
            assert!(prod.contains(&format!("/run/secrets/registerbrygga/{k}")), "production.toml does not use secret {k}");
        }
    }
}

#[test]
fn container_file_is_multi_stage_and_non_root() {
    let f = std::fs::read_to_string("deploy/container/Containerfile").unwrap();
    let froms: Vec<&str> = f.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build stage + runtime stage");
    let runtime = &f[f.rfind("\nFROM ").unwrap()..];
    assert!(runtime.contains("\nUSER 10001"), "the runtime stage must run as a non-root user");
    assert!(!runtime.contains("cargo ") && !runtime.contains("build-essential") && !runtime.contains("gcc"), "no build tools in the final image");
    assert!(runtime.contains("COPY --from=build"), "the binary comes from the build stage");
}

#[test]
fn sample_production_config_is_well_formed() {
    let text = std::fs::read_to_string("config/production.toml").unwrap();
    let v: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(v["store"]["backend"].as_str(), Some("postgres"));
    // No literal secrets: every secret is a { file = … } table.
    assert!(v["store"]["postgres_url"].get("file").is_some());
    assert!(v["security"]["pseudonym_key"].get("file").is_some());
}
