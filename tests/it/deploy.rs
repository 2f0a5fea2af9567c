//! The deployment files (`Dockerfile`, `docker-compose.yml`, `deploy/`) checked by
//! parsing them: no container is built or started, so these run wherever `cargo
//! test` does. They check the structure and the references between the files (a
//! mounted file exists, a scrape target is a compose service, a `CONVERGER_*`
//! variable is a real setting), not that the images run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Args;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// Every metric the server exports, by base name (histograms without the
/// `_bucket`/`_sum`/`_count` suffixes). The dashboard shows each of them.
const EXPORTED_METRICS: &[&str] = &[
    "converger_http_requests_total",
    "converger_http_request_duration_seconds",
    "converger_activities_ingested_total",
    "converger_delivery_attempts_total",
    "converger_delivery_attempt_duration_seconds",
    "converger_delivery_queue_depth",
    "converger_channel_health",
    "converger_websocket_connections",
    "converger_websocket_joined_topics",
    "converger_pubsub_lag_seconds",
    "converger_pubsub_lagged_total",
    "converger_db_pool_connections",
    "converger_db_pool_max_connections",
    "converger_rate_limited_total",
    "converger_build_info",
];

/// The services docker-compose.yml must define.
const COMPOSE_SERVICES: &[&str] = &["postgres", "node1", "node2", "lb", "prometheus", "grafana"];

/// The rows of the dashboard, top to bottom.
const DASHBOARD_ROWS: &[&str] = &["Traffic", "Ingest & delivery", "Real time", "Database"];

const DASHBOARD: &str = "deploy/grafana/dashboards/converger.json";
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/converger.yml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const NGINX: &str = "deploy/nginx/nginx.conf";

/// The port a node serves on (`CONVERGER_LISTEN`'s default, `EXPOSE` of the image).
const NODE_PORT: &str = "4000";

/// Names of the `converger_*` metrics that the dashboard's PromQL refers to (panel
/// targets and template variables), with histogram suffixes (`_bucket`, `_sum`,
/// `_count`) stripped, so that they compare with the names a node exports.
///
/// # Panics
/// When the dashboard file is missing or is not JSON.
pub fn dashboard_metric_names() -> BTreeSet<String> {
    dashboard_exprs(&dashboard())
        .iter()
        .flat_map(|expr| metric_names(expr))
        .collect()
}

// ---- reading the files ----------------------------------------------------------

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

#[track_caller]
fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// A YAML file with its merge keys (`<<: *anchor`) applied, as Compose does.
#[track_caller]
fn yaml(relative: &str) -> Yaml {
    let mut value: Yaml = serde_norway::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{relative}: bad merge key: {e}"));
    value
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

#[track_caller]
fn str_of<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

#[track_caller]
fn seq_of<'a>(value: &'a Yaml, what: &str) -> &'a [Yaml] {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
}

/// The `CONVERGER_*` variables the server reads, from its clap definition.
fn settings() -> BTreeSet<String> {
    converger::Config::augment_args(clap::Command::new("converger"))
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

// ---- docker-compose.yml ---------------------------------------------------------

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

#[track_caller]
fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.is_mapping(),
        "docker-compose.yml has no service {name}"
    );
    service
}

fn service_names(compose: &Yaml) -> BTreeSet<String> {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has a services mapping")
        .keys()
        .map(|k| str_of(k, "a service name").to_owned())
        .collect()
}

/// The services built from this repository's Dockerfile: the Converger nodes.
fn node_services(compose: &Yaml) -> BTreeSet<String> {
    service_names(compose)
        .into_iter()
        .filter(|name| !compose["services"][name.as_str()]["build"].is_null())
        .collect()
}

/// A service's environment, in either of Compose's forms (mapping or `KEY=value` list).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    let env = &service["environment"];
    if let Some(map) = env.as_mapping() {
        map.iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::Null => String::new(),
                    Yaml::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .expect("a scalar serializes")
                        .trim()
                        .to_owned(),
                };
                (str_of(k, "a variable name").to_owned(), value)
            })
            .collect()
    } else if let Some(list) = env.as_sequence() {
        list.iter()
            .map(|item| {
                let item = str_of(item, "an environment entry");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    } else {
        BTreeMap::new()
    }
}

/// Bind mounts of a service as (path on the host, path in the container), in either
/// of Compose's forms; named volumes are left out.
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    let Some(volumes) = service["volumes"].as_sequence() else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|volume| {
            let (source, target) = match volume {
                Yaml::String(short) => {
                    let mut parts = short.split(':');
                    (parts.next()?.to_owned(), parts.next()?.to_owned())
                }
                long => {
                    if long["type"].as_str() != Some("bind") {
                        return None;
                    }
                    (
                        str_of(&long["source"], "a mount source").to_owned(),
                        str_of(&long["target"], "a mount target").to_owned(),
                    )
                }
            };
            (source.starts_with("./") || source.starts_with('/')).then_some((source, target))
        })
        .collect()
}

/// The container path where `host_path` (relative to the repository, `./...`) is
/// mounted by some service.
#[track_caller]
fn mount_target(compose: &Yaml, host_path: &str) -> String {
    let wanted = host_path.trim_end_matches('/');
    service_names(compose)
        .iter()
        .flat_map(|name| bind_mounts(&compose["services"][name.as_str()]))
        .find(|(source, _)| source.trim_end_matches('/') == wanted)
        .map(|(_, target)| target)
        .unwrap_or_else(|| panic!("no compose service mounts {host_path}"))
}

#[test]
fn compose_defines_the_services_and_their_files_exist() {
    let compose = compose();
    let names = service_names(&compose);
    for wanted in COMPOSE_SERVICES {
        assert!(names.contains(*wanted), "missing compose service {wanted}");
    }
    for name in &names {
        let service = &compose["services"][name.as_str()];
        for (source, target) in bind_mounts(service) {
            let relative = source
                .strip_prefix("./")
                .unwrap_or_else(|| panic!("{name} mounts {source} from outside the repository"));
            assert!(
                repo_path(relative).exists(),
                "{name} mounts {source} (at {target}), which is not in the repository"
            );
        }
        let build = &service["build"];
        if !build.is_null() {
            let (context, dockerfile) = match build {
                Yaml::String(context) => (context.as_str(), "Dockerfile"),
                build => (
                    build["context"].as_str().unwrap_or("."),
                    build["dockerfile"].as_str().unwrap_or("Dockerfile"),
                ),
            };
            assert!(
                repo_path(context).join(dockerfile).is_file(),
                "{name} builds {context}/{dockerfile}, which does not exist"
            );
        }
    }
}

#[test]
fn compose_nodes_share_one_database_and_secret_behind_trusted_proxies() {
    let compose = compose();
    let nodes = node_services(&compose);
    assert_eq!(
        nodes,
        BTreeSet::from(["node1".to_owned(), "node2".to_owned()]),
        "the services built from the Dockerfile"
    );
    let env1 = environment(service(&compose, "node1"));
    let env2 = environment(service(&compose, "node2"));
    assert_eq!(env1, env2, "both nodes run with the same settings");

    let database = &env1["CONVERGER_DATABASE_URL"];
    assert!(
        database.starts_with("postgres://") && database.contains("@postgres:5432/"),
        "nodes use the postgres service: {database}"
    );
    let secret = &env1["CONVERGER_JWT_SECRET"];
    assert!(
        secret.starts_with("${CONVERGER_JWT_SECRET:?"),
        "the JWT secret is required from the environment, never a default: {secret}"
    );

    // X-Forwarded-For is believed from the compose network, where the balancer is.
    let subnets: BTreeSet<&str> = seq_of(
        &compose["networks"]["converger"]["ipam"]["config"],
        "ipam config",
    )
    .iter()
    .map(|c| str_of(&c["subnet"], "a subnet"))
    .collect();
    let trusted: BTreeSet<&str> = env1["CONVERGER_TRUSTED_PROXIES"]
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(trusted, subnets, "trusted proxies are the compose network");
    for name in nodes.iter().map(String::as_str).chain(["lb"]) {
        let networks = seq_of(&service(&compose, name)["networks"], "networks");
        assert!(
            networks.iter().any(|n| n.as_str() == Some("converger")),
            "{name} is on the converger network"
        );
    }
    assert!(
        env1.contains_key("CONVERGER_ADMIN_ALLOWED_IPS"),
        "the admin allow-list is set explicitly"
    );

    for name in &nodes {
        let depends = &service(&compose, name)["depends_on"]["postgres"]["condition"];
        assert_eq!(
            depends.as_str(),
            Some("service_healthy"),
            "{name} waits for a healthy postgres"
        );
    }
    let postgres = service(&compose, "postgres");
    let image = str_of(&postgres["image"], "postgres image");
    assert!(image.starts_with("postgres:16"), "PostgreSQL 16: {image}");
    let check = serde_norway::to_string(&postgres["healthcheck"]["test"]).unwrap();
    assert!(
        check.contains("pg_isready"),
        "postgres healthcheck: {check}"
    );
    assert!(
        bind_mounts(service(&compose, "lb"))
            .iter()
            .any(|(source, _)| source == &format!("./{NGINX}")),
        "the balancer uses {NGINX}"
    );
}

#[test]
fn every_converger_variable_is_a_real_setting() {
    let settings = settings();
    assert!(
        settings.contains("CONVERGER_DATABASE_URL") && settings.len() > 20,
        "the settings are read from the clap definition: {settings:?}"
    );
    let compose = compose();
    let mut used = Vec::new();
    for name in service_names(&compose) {
        for key in environment(&compose["services"][name.as_str()]).into_keys() {
            used.push((format!("docker-compose.yml service {name}"), key));
        }
    }
    for (keyword, args) in dockerfile_instructions(&read("Dockerfile")) {
        if keyword == "ENV" {
            let key = args.split(['=', ' ']).next().unwrap_or_default().to_owned();
            used.push(("Dockerfile ENV".to_owned(), key));
        }
    }
    for (place, key) in used {
        if key.starts_with("CONVERGER_") {
            assert!(settings.contains(&key), "{place}: {key} is not a setting");
        }
    }
}

#[test]
fn nginx_balances_every_node_and_upgrades_sockets() {
    let conf = read(NGINX);
    let upstreams: BTreeSet<String> = conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|addr| {
            addr.trim_end_matches(';')
                .strip_suffix(&format!(":{NODE_PORT}"))
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(upstreams, node_services(&compose()), "upstream servers");
    for needed in [
        "location /socket/",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For",
        "proxy_set_header X-Forwarded-Proto",
        "proxy_read_timeout 1h;",
        // Long-poll sessions live on one node.
        "location /socket/longpoll",
        "proxy_pass http://converger_longpoll;",
        "hash $remote_addr consistent;",
    ] {
        assert!(conf.contains(needed), "{NGINX} lacks `{needed}`");
    }
    let opens = conf.matches('{').count();
    let closes = conf.matches('}').count();
    assert_eq!(opens, closes, "{NGINX}: braces balance");
}

// ---- Prometheus -----------------------------------------------------------------

#[test]
fn prometheus_scrapes_every_node_and_loads_its_alerts() {
    let compose = compose();
    let config = yaml(PROMETHEUS);
    let jobs = seq_of(&config["scrape_configs"], "scrape_configs");
    let job = jobs
        .iter()
        .find(|job| job["job_name"].as_str() == Some("converger"))
        .expect("a scrape job named converger");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let mut hosts = BTreeSet::new();
    for group in seq_of(&job["static_configs"], "static_configs") {
        for target in seq_of(&group["targets"], "targets") {
            let target = str_of(target, "a target");
            let (host, port) = target.rsplit_once(':').expect("targets are host:port");
            assert_eq!(port, NODE_PORT, "{target} scrapes the node port");
            hosts.insert(host.to_owned());
        }
    }
    assert_eq!(hosts, node_services(&compose), "scraped hosts");

    let alerts_at = mount_target(&compose, &format!("./{ALERTS}"));
    let rule_files: Vec<&str> = seq_of(&config["rule_files"], "rule_files")
        .iter()
        .map(|f| str_of(f, "a rule file"))
        .collect();
    assert_eq!(rule_files, [alerts_at.as_str()], "rule files are mounted");

    let alerts = yaml(ALERTS);
    let exported: BTreeSet<String> = EXPORTED_METRICS.iter().map(|m| (*m).to_owned()).collect();
    let mut count = 0;
    for group in seq_of(&alerts["groups"], "groups") {
        for rule in seq_of(&group["rules"], "rules") {
            let name = str_of(&rule["alert"], "an alert name");
            let expr = str_of(&rule["expr"], "an alert expression");
            assert!(
                metric_names(expr).is_subset(&exported),
                "alert {name} uses a metric the server does not export: {expr}"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name} has a summary"
            );
            count += 1;
        }
    }
    assert!(count > 0, "{ALERTS} has rules");
}

// ---- Grafana --------------------------------------------------------------------

/// The uid of the provisioned Prometheus data source, after checking that it points
/// at the compose service.
fn provisioned_datasource_uid() -> String {
    let config = yaml(DATASOURCES);
    let sources = seq_of(&config["datasources"], "datasources");
    let prometheus: Vec<&Yaml> = sources
        .iter()
        .filter(|s| s["type"].as_str() == Some("prometheus"))
        .collect();
    assert_eq!(prometheus.len(), 1, "one Prometheus data source");
    let source = prometheus[0];
    let url = str_of(&source["url"], "the data source url");
    let host = url
        .trim_start_matches("http://")
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    assert!(
        service_names(&compose()).contains(host) && host == "prometheus",
        "the data source is the prometheus service: {url}"
    );
    let uid = str_of(&source["uid"], "the data source uid");
    assert!(!uid.is_empty());
    uid.to_owned()
}

#[test]
fn grafana_provisioning_finds_the_dashboard() {
    let compose = compose();
    assert_eq!(
        mount_target(&compose, "./deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_at = mount_target(&compose, "./deploy/grafana/dashboards");
    let config = yaml(DASHBOARD_PROVIDERS);
    let providers = seq_of(&config["providers"], "providers");
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0]["type"].as_str(), Some("file"));
    assert_eq!(
        providers[0]["options"]["path"]
            .as_str()
            .map(|p| p.trim_end_matches('/')),
        Some(dashboards_at.trim_end_matches('/')),
        "the provider reads the mounted dashboards"
    );
    provisioned_datasource_uid();
}

/// Every panel, rows included, with the panels of collapsed rows.
fn all_panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels array") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The PromQL of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(dashboard: &Json) -> Vec<String> {
    let mut exprs: Vec<String> = all_panels(dashboard)
        .into_iter()
        .filter_map(|panel| panel["targets"].as_array())
        .flatten()
        .filter_map(|target| target["expr"].as_str())
        .map(str::to_owned)
        .collect();
    if let Some(variables) = dashboard["templating"]["list"].as_array() {
        for variable in variables {
            let query = &variable["query"];
            if let Some(q) = query.as_str().or_else(|| query["query"].as_str()) {
                exprs.push(q.to_owned());
            }
        }
    }
    exprs
}

#[test]
fn dashboard_panels_are_complete_and_laid_out() {
    let uid = provisioned_datasource_uid();
    let dashboard = dashboard();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let instance = variables
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` template variable");
    assert_eq!(instance["datasource"]["uid"], uid.as_str());

    let panels = all_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    let mut rows = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().expect("numeric panel id");
        assert!(ids.insert(id), "panel id {id} is used twice");

        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k} is not a number"))
        });
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {grid}");
        boxes.push((title, x, y, w, h));

        if panel["type"] == "row" {
            rows.push((y, title));
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            uid.as_str(),
            "{title}: data source"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert!(
                ref_ids.insert(target["refId"].as_str().unwrap_or_default()),
                "{title}: refIds are unique"
            );
            if !target["datasource"].is_null() {
                assert_eq!(
                    target["datasource"]["uid"],
                    uid.as_str(),
                    "{title}: data source"
                );
            }
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: parentheses balance in {expr}"
            );
            // The instance picker applies to every panel.
            for (metric, labels) in converger_selectors(expr) {
                assert!(
                    labels.contains(r#"instance=~"$instance""#),
                    "{title}: {metric} ignores $instance in {expr}"
                );
            }
        }
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            assert!(apart, "panels {:?} and {:?} overlap", a.0, b.0);
        }
    }
    rows.sort();
    let rows: Vec<&str> = rows.into_iter().map(|(_, title)| title).collect();
    assert_eq!(rows, DASHBOARD_ROWS);
}

#[test]
fn dashboard_shows_every_exported_metric() {
    let exported: BTreeSet<String> = EXPORTED_METRICS.iter().map(|m| (*m).to_owned()).collect();
    assert_eq!(dashboard_metric_names(), exported);
}

// ---- PromQL identifiers ---------------------------------------------------------

/// The `converger_*` metric selectors of a PromQL expression, each with the text of
/// its label matchers (empty without braces). String literals are skipped, so a
/// label value is never taken for a metric.
fn converger_selectors(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_braces(&chars, i);
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let mut labels = String::new();
            if j < chars.len() && chars[j] == '{' {
                let end = skip_braces(&chars, j);
                let close = if chars[end - 1] == '}' { end - 1 } else { end };
                labels = chars[j + 1..close.max(j + 1)].iter().collect();
                i = end;
            }
            if name.starts_with("converger_") {
                out.push((name, labels));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Index just past the string literal that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// Index just past the `}` that closes the `{` at `start`.
fn skip_braces(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            '}' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The base names of the `converger_*` metrics an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    converger_selectors(expr)
        .into_iter()
        .map(|(name, _)| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or_else(|| name.clone(), str::to_owned)
        })
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(converger_http_request_duration_seconds_bucket{job="converger", route="converger_fake_total"}[$__rate_interval])))
        / ignoring(x) sum(converger_db_pool_max_connections) + converger_x_count{a='}'} + up"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "converger_db_pool_max_connections",
            "converger_http_request_duration_seconds",
            "converger_x",
        ]
    );
    let selectors = converger_selectors(expr);
    assert_eq!(
        selectors[0].1,
        r#"job="converger", route="converger_fake_total""#
    );
    assert_eq!(selectors[1].1, "");
    assert_eq!(selectors[2].1, "a='}'");
}

// ---- Dockerfile -----------------------------------------------------------------

/// Instructions as (KEYWORD, arguments): continuation lines joined, comments and
/// parser directives dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// Whether a `.dockerignore` pattern excludes `path` (both relative to the context):
/// `*` within one path component, `**` across components, and a matched directory
/// excludes what it holds.
fn ignored_by(pattern: &str, path: &str) -> bool {
    fn component(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head)
                    && (0..=name.len() - head.len()).any(|skip| {
                        name.is_char_boundary(head.len() + skip)
                            && component(tail, &name[head.len() + skip..])
                    })
            }
        }
    }
    fn prefix(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, _) => true,
            (Some(&"**"), _) => (0..=path.len()).any(|skip| prefix(&pattern[1..], &path[skip..])),
            (Some(_), None) => false,
            (Some(p), Some(name)) => component(p, name) && prefix(&pattern[1..], &path[1..]),
        }
    }
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_matches('/').split('/').collect();
    prefix(&pattern, &path)
}

#[test]
fn dockerignore_patterns_match_like_docker() {
    assert!(ignored_by("**/target", "target"));
    assert!(ignored_by("**/target", "bench/loadgen/target/release"));
    assert!(ignored_by("*.db", "converger.db"));
    assert!(!ignored_by("*.db", "src/store/mod.rs"));
    assert!(!ignored_by("deploy", "src"));
    assert!(ignored_by(".git", ".git/config"));
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let instructions = dockerfile_instructions(&read("Dockerfile"));
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let last = *stages.last().unwrap();
    let (build, runtime) = (&instructions[..last], &instructions[last..]);

    // The builder's toolchain is at least the crate's rust-version.
    let image = build[stages[0]].1.split_whitespace().next().unwrap();
    let tag = image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the build stage starts from rust:<version>: {image}"));
    let version = |v: &str| -> (u32, u32) {
        let mut parts = v
            .split('.')
            .map(|p| p.parse::<u32>().expect("numeric version"));
        (parts.next().unwrap(), parts.next().unwrap_or(0))
    };
    let image_version = version(tag.split('-').next().unwrap());
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml sets rust-version")
        .trim_matches('"');
    assert!(
        image_version >= version(rust_version),
        "rust:{tag} is older than rust-version {rust_version}"
    );
    assert!(
        build
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked")),
        "the binary is built with --release --locked"
    );

    // What the build copies exists, and .dockerignore leaves it in the context.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for wanted in ["**/target", ".git"] {
        assert!(patterns.contains(&wanted), ".dockerignore lacks {wanted}");
    }
    let mut copied = BTreeSet::new();
    for (_, args) in build.iter().filter(|(k, _)| k == "COPY") {
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (_, sources) = words.split_last().expect("COPY has a destination");
        for source in sources {
            let source = source.trim_start_matches("./");
            assert!(
                repo_path(source).exists(),
                "COPY {source}: not in the repository"
            );
            for pattern in &patterns {
                assert!(
                    !ignored_by(pattern, source),
                    "COPY {source}, but .dockerignore excludes it ({pattern})"
                );
            }
            copied.insert(source.to_owned());
        }
    }
    // askama.toml says where templates are; migrations are embedded by sqlx::migrate!.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "askama.toml",
        "migrations",
        "src",
    ] {
        assert!(copied.contains(needed), "the build does not copy {needed}");
    }

    let find = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let user = find("USER");
    let user = user.last().expect("the runtime stage sets USER");
    let name = user.split(':').next().unwrap();
    assert!(
        name != "root" && name != "0",
        "the runtime user is not root: {user}"
    );
    assert!(find("EXPOSE").iter().any(|ports| {
        ports
            .split_whitespace()
            .any(|p| p == "4000" || p == "4000/tcp")
    }));
    assert_eq!(find("ENTRYPOINT"), [r#"["converger"]"#]);
    assert_eq!(find("CMD"), [r#"["serve"]"#]);
    assert!(find("ENV").contains(&"CONVERGER_DATABASE_URL=sqlite:///data/converger.db"));
    assert!(find("VOLUME").iter().any(|v| v.contains("/data")));
    assert!(
        find("LABEL")
            .iter()
            .any(|l| l.contains("org.opencontainers.image.")),
        "OCI labels"
    );
}
