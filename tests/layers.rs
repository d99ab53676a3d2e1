//! The layering of the crate, checked on its source: the daemon knows
//! nothing of Kubernetes, and no two top-level modules use each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MODULES: &[&str] = &[
    "cli",
    "daemon",
    "device",
    "failover",
    "fence",
    "k8s",
    "platform",
    "runtime",
    "scsi",
    "sim",
    "source",
    "transport",
];

/// Every `.rs` file under `dir`, test-only directories excluded.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && p.file_name().is_some_and(|n| n != "tests") {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).expect("readable source");
            out.push((p.display().to_string(), text));
        }
    }
}

/// The code of a file without its unit tests and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which top-level modules each top-level module names (`crate::m`, and
/// `csi_fencer::m` from the binary).
fn uses() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut out = BTreeMap::new();
    for m in MODULES {
        let mut files = Vec::new();
        sources(&Path::new("src").join(m), &mut files);
        let mut named = BTreeSet::new();
        for (_, text) in &files {
            let c = code(text);
            for other in MODULES.iter().filter(|o| *o != m) {
                let a = format!("crate::{other}");
                let b = format!("csi_fencer::{other}");
                let hit = |pat: &str| {
                    c.match_indices(pat).any(|(i, _)| {
                        let next = c[i + pat.len()..].chars().next();
                        !next.is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
                    })
                };
                if hit(&a) || hit(&b) {
                    named.insert(*other);
                }
            }
        }
        out.insert(*m, named);
    }
    out
}

#[test]
fn the_daemon_imports_nothing_from_kubernetes() {
    let mut files = Vec::new();
    sources(Path::new("src/daemon"), &mut files);
    assert!(!files.is_empty());
    for (path, text) in files {
        let c = code(&text);
        assert!(
            !c.contains("crate::k8s") && !c.contains("super::super::k8s"),
            "{path} uses k8s: the daemon is generic over its source (docs/design.md §2)"
        );
    }
}

#[test]
fn no_two_modules_use_each_other() {
    let u = uses();
    assert!(
        u["daemon"].contains("fence"),
        "the scan sees imports: {u:?}"
    );
    let mut both = Vec::new();
    for (a, named) in &u {
        for b in named {
            if a < b && u[b].contains(a) {
                both.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(both.is_empty(), "modules using each other: {both:?}");
}
