//! Every deployment file parses, and says what a deployment needs: the compose
//! services node1-node3 with the prototype's variables, ports and health checks;
//! the Kubernetes StatefulSet with stable names, probes, a volume per node and the
//! cluster secret; and an image that runs as the user the manifests expect.
//!
//! No cluster is needed: these are checks of the files, run by `cargo test`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .join("deploy")
}

/// Every YAML document of `path`, with `<<` merge keys applied (as compose does).
fn documents(path: &Path) -> Vec<Value> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn k8s_objects() -> Vec<Value> {
    let files = yaml_files(&deploy_dir().join("k8s"));
    assert!(!files.is_empty(), "deploy/k8s has no manifests");
    files.iter().flat_map(|f| documents(f)).collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/k8s"))
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

/// Replaces compose's `${NAME:-default}` by its default.
fn interpolate_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The user id the image runs as (`USER uid:gid` in the Dockerfile).
fn image_user() -> u64 {
    let dockerfile = fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    user.split(':').next().unwrap().trim().parse().unwrap()
}

/// `version` of `[workspace.package]`: the tag `cargo xtask image` builds.
fn workspace_version() -> String {
    let manifest = deploy_dir().parent().unwrap().join("Cargo.toml");
    let text = fs::read_to_string(manifest).unwrap();
    let section = text
        .split_once("[workspace.package]")
        .expect("a [workspace.package] section")
        .1;
    let line = section
        .lines()
        .find_map(|l| l.trim().strip_prefix("version"))
        .expect("a workspace version");
    line.trim_start_matches([' ', '='])
        .trim()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn every_deployment_file_parses() {
    let mut files = yaml_files(&deploy_dir());
    files.extend(yaml_files(&deploy_dir().join("k8s")));
    for file in files {
        let documents = documents(&file);
        assert!(!documents.is_empty(), "{} is empty", file.display());
        for document in documents {
            assert!(
                document.is_mapping(),
                "{}: a document is not a mapping",
                file.display()
            );
        }
    }
}

#[test]
fn dockerfile_builds_a_non_root_image_from_scratch_with_a_health_check() {
    let dockerfile = fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.lines().any(|l| l.trim() == "FROM scratch"));
    assert_ne!(image_user(), 0, "the image must not run as root");
    assert!(dockerfile.contains(r#"CMD ["/kvnode", "healthcheck"]"#));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/kvnode"]"#));
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = deploy_dir().join("k8s");
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources is a list")
        .iter()
        .map(|r| str_of(r, "a resource"))
        .collect();
    let present: BTreeSet<String> = yaml_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(listed, present);
}

#[test]
fn k8s_objects_have_kinds_names_and_labels() {
    for object in k8s_objects() {
        let kind = str_of(&object["kind"], "kind");
        if kind == "Kustomization" {
            continue;
        }
        assert!(object["apiVersion"].is_string(), "{kind} has no apiVersion");
        let name = str_of(&object["metadata"]["name"], "metadata.name");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/name"], "kvnode",
            "{kind} {name} lacks the app label"
        );
    }
}

#[test]
fn headless_service_gives_the_pods_stable_names() {
    let objects = k8s_objects();
    let statefulset = object(&objects, "StatefulSet", "kvnode");
    let service_name = str_of(&statefulset["spec"]["serviceName"], "serviceName");
    let service = object(&objects, "Service", service_name);
    assert_eq!(
        service["spec"]["clusterIP"], "None",
        "the Service is not headless"
    );
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"], true,
        "peers must resolve a node before it is ready"
    );
    assert_eq!(
        service["spec"]["selector"],
        statefulset["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 5000);
}

#[test]
fn statefulset_runs_three_nodes_that_know_each_other() {
    let objects = k8s_objects();
    let statefulset = object(&objects, "StatefulSet", "kvnode");
    let spec = &statefulset["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(
        spec["selector"]["matchLabels"],
        spec["template"]["metadata"]["labels"]
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_u64(),
        Some(image_user()),
        "the pod's user is not the image's"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!("kvnode:{}", workspace_version()).as_str(),
        "the StatefulSet runs another version than `cargo xtask image` builds"
    );
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");

    let env = container["env"].as_sequence().expect("env is a list");
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("the container does not set {name}"))
    };
    for entry in env {
        assert!(
            entry["value"].is_null() || entry["value"].is_string(),
            "{:?}: Kubernetes needs env values as strings",
            entry["name"]
        );
    }
    assert_eq!(
        var("NODE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let port: u64 = str_of(&var("PORT")["value"], "PORT").parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
    let service = str_of(&spec["serviceName"], "serviceName");
    let expected: Vec<String> = (0..3)
        .map(|i| format!("kvnode-{i}=http://kvnode-{i}.{service}:{port}"))
        .collect();
    assert_eq!(str_of(&var("NODES")["value"], "NODES"), expected.join(","));

    let secret_ref = &var("KVNODE_CLUSTER_SECRET")["valueFrom"]["secretKeyRef"];
    let secret = object(
        &objects,
        "Secret",
        str_of(&secret_ref["name"], "secret name"),
    );
    let key = str_of(&secret_ref["key"], "secret key");
    assert!(
        secret["stringData"][key].is_string() || secret["data"][key].is_string(),
        "the Secret has no {key}"
    );
}

#[test]
fn statefulset_has_probes_and_a_volume_per_node() {
    let objects = k8s_objects();
    let statefulset = object(&objects, "StatefulSet", "kvnode");
    let container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let probe_spec = &container[probe];
        let http = probe_spec["httpGet"]["path"] == "/health"
            && probe_spec["httpGet"]["port"] == container["ports"][0]["name"];
        let command = &probe_spec["exec"]["command"];
        let exec = command.get(0) == Some(&Value::from("/kvnode"))
            && command.get(1) == Some(&Value::from("healthcheck"));
        assert!(
            http || exec,
            "{probe} neither gets /health nor runs the healthcheck: {probe_spec:?}"
        );
    }

    let claims = statefulset["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .expect("a volumeClaimTemplates list");
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["name"], claim["metadata"]["name"]);
    let data_dir = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KVNODE_DATA_DIR")
        .map_or("/data", |e| str_of(&e["value"], "KVNODE_DATA_DIR"));
    assert_eq!(mount["mountPath"], data_dir);
}

#[test]
fn compose_runs_node1_to_node3_as_the_prototype_did() {
    let path = deploy_dir().join("compose.yaml");
    let text = interpolate_defaults(&fs::read_to_string(&path).unwrap());
    let mut compose: Value = serde_yaml::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    // docker-compose v1 reads a file without `version` as the old format 1.
    assert!(compose["version"]
        .as_str()
        .is_some_and(|v| v.starts_with('3')));

    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(|k| str_of(k, "a service")).collect();
    assert_eq!(names, ["node1", "node2", "node3"]);
    for (index, name) in names.iter().enumerate() {
        let service = &compose["services"][*name];
        assert_eq!(service["image"], "kvnode:latest");
        assert_eq!(service["hostname"], *name);
        assert!(
            service["restart"].is_string(),
            "{name} has no restart policy"
        );
        let env = &service["environment"];
        for (key, value) in env.as_mapping().expect("environment is a mapping") {
            assert!(
                value.is_string() || value.is_number(),
                "{name}: {key:?} must be a string for docker-compose v1"
            );
        }
        assert_eq!(env["NODE_ID"], *name);
        assert_eq!(env["NODES"], "node1,node2,node3");
        let port = str_of(&env["PORT"], "PORT");
        assert_eq!(
            service["ports"][0],
            format!("{}:{port}", 5001 + index).as_str(),
            "{name} is not on host port {}",
            5001 + index
        );
        assert_eq!(
            service["healthcheck"]["test"],
            Value::from(vec!["CMD", "/kvnode", "healthcheck"])
        );
        let volume = str_of(&service["volumes"][0], "a volume");
        let (volume_name, mount) = volume.split_once(':').unwrap();
        assert_eq!(mount, "/data");
        assert!(
            compose["volumes"][volume_name].is_mapping(),
            "volume {volume_name} is not declared"
        );
        let network = &service["networks"][0];
        assert!(compose["networks"][network].is_mapping());
    }
}

#[test]
fn compose_e2e_override_enables_the_fault_hook() {
    let override_file = &documents(&deploy_dir().join("compose.e2e.yaml"))[0];
    assert!(override_file["version"].is_string());
    for name in ["node1", "node2", "node3"] {
        let service = &override_file["services"][name];
        assert_eq!(
            service["restart"], "no",
            "{name} would be restarted by Docker"
        );
        let env = &service["environment"];
        assert_eq!(env["KVNODE_FAULTS"], "true");
        assert!(env["KVNODE_REPAIR_AFTER"].is_string());
        assert!(str_of(&env["KVNODE_CLUSTER_SECRET"], "the secret").len() >= 16);
    }
}
