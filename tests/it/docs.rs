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

/// The anchors GitHub gives the headings of a Markdown text: lowercased, spaces as
/// `-`, other punctuation dropped (`## 8. Long-poll` is `#8-long-poll`).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !in_code) else {
            continue;
        };
        let title = title.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        found.insert(anchor);
    }
    found
}

/// Files whose text may cite the docs: sources, tests, benchmarks, documentation.
fn citing_files() -> Vec<PathBuf> {
    let mut files = rust_files(&root().join("src"));
    files.extend(rust_files(&root().join("tests")));
    files.extend(rust_files(&root().join("bench")));
    for doc in ["README.md", "BENCHMARKS.md", "bench/README.md"] {
        files.push(root().join(doc));
    }
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    files.retain(|f| f.exists());
    files
}

#[test]
fn every_cited_docs_section_exists() {
    let mut cited = 0;
    for file in citing_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices("docs/") {
            let rest = &text[at + "docs/".len()..];
            let Some((page, after)) = rest.split_once(".md#") else {
                continue;
            };
            if page.is_empty() || !page.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            let anchor: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if anchor.is_empty() {
                // `docs/design.md#<section>`: how to cite, not a citation.
                continue;
            }
            let doc = root().join("docs").join(format!("{page}.md"));
            let headings = std::fs::read_to_string(&doc)
                .map(|d| anchors(&d))
                .unwrap_or_else(|_| panic!("{file:?} cites docs/{page}.md, which does not exist"));
            assert!(
                headings.contains(&anchor),
                "{file:?} cites docs/{page}.md#{anchor}, which is no section of it"
            );
            cited += 1;
        }
    }
    assert!(cited > 0, "no citation found: the scan is broken");
}

#[test]
fn no_citation_leaves_the_repository() {
    // This file names what it looks for.
    for file in citing_files()
        .into_iter()
        .filter(|f| !f.ends_with("tests/it/docs.rs"))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        for outside in ["DESIGN.md", "protocols.md §", "STYLE.md", "shared/docs"] {
            assert!(
                !text.contains(outside),
                "{file:?} cites {outside:?}, which is not part of this repository"
            );
        }
    }
}

#[test]
fn anchors_follow_github() {
    let found =
        anchors("# Title\n## 8. Long-poll\n```\n# not a heading\n```\n### Meta send errors\n");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["8-long-poll", "meta-send-errors", "title"]
    );
}
