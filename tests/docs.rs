//! The reference docs against the code: every flag, configuration key and
//! metric documented in docs/ exists in the code, and every one in the code
//! is documented. Each test parses only its own table, found by its heading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use csi_fencer::daemon::config::Config;
use csi_fencer::daemon::metrics::Metrics;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The cells of every row of the first table after the `## {heading}` line
/// (header and separator rows skipped).
fn table(doc: &str, file: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = doc
        .lines()
        .skip_while(|l| l.trim() != format!("## {heading}"));
    assert!(
        lines.next().is_some(),
        "{file}: no heading \"## {heading}\""
    );
    let rows: Vec<Vec<String>> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(
        !rows.is_empty(),
        "{file}: the table under {heading} is empty"
    );
    rows
}

/// Every `code` span of a cell.
fn spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// The default of a default cell: its first `code` span when the cell starts
/// with one ("none (`x`)" is no default).
/// The documented default; a cell of the form "`a` on Linux, `b` on
/// Windows" gives this system's.
fn default_of(cell: &str) -> Option<String> {
    if !cell.starts_with('`') {
        return None;
    }
    let os = if cfg!(windows) {
        "on Windows"
    } else {
        "on Linux"
    };
    let mine = cell.split(", ").find(|part| part.trim_end().ends_with(os));
    spans(mine.unwrap_or(cell)).into_iter().next()
}

fn diff(what: &str, docs: &BTreeSet<String>, code: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let missing: Vec<_> = code.difference(docs).collect();
    if !missing.is_empty() {
        out.push(format!(
            "{what} in the code but not in the docs: {missing:?}"
        ));
    }
    let extra: Vec<_> = docs.difference(code).collect();
    if !extra.is_empty() {
        out.push(format!("{what} in the docs but not in the code: {extra:?}"));
    }
    out
}

fn help(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(args)
        .output()
        .expect("run csi-fencer");
    assert!(o.status.success(), "csi-fencer {args:?} failed: {o:?}");
    String::from_utf8(o.stdout).expect("utf-8 help")
}

/// `--long` flags of a `--help` text with their `[default: …]`, if any.
/// Hidden flags are not in the help, so they are not here either.
fn help_flags(text: &str) -> BTreeMap<String, Option<String>> {
    let flag = regex::Regex::new(r"^\s+(?:-[a-zA-Z], )?(--[a-z0-9][a-z0-9-]*)").unwrap();
    let default = regex::Regex::new(r"\[default: ([^\]]*)\]").unwrap();
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(c) = flag.captures(line) {
            let name = c[1].to_string();
            out.insert(name.clone(), None);
            current = Some(name);
        } else if !line.starts_with(' ') && !line.is_empty() {
            current = None;
        }
        if let (Some(name), Some(d)) = (&current, default.captures(line)) {
            out.insert(name.clone(), Some(d[1].to_string()));
        }
    }
    out.remove("--help");
    out.remove("--version");
    out
}

#[test]
fn every_run_flag_is_documented_and_every_documented_flag_exists() {
    let mut code = help_flags(&help(&["run", "--help"]));
    code.extend(help_flags(&help(&["--help"])));
    assert!(
        code.contains_key("--node-name") && code.contains_key("--timeout"),
        "the help parser found too little: {code:?}"
    );
    let doc = read("docs/configuration.md");
    let rows = table(&doc, "docs/configuration.md", "Flags of `csi-fencer run`");
    let mut documented = BTreeMap::new();
    for r in &rows {
        let names: Vec<String> = spans(&r[0])
            .into_iter()
            .filter(|s| s.starts_with("--"))
            .collect();
        assert_eq!(names.len(), 1, "docs/configuration.md: flag row {r:?}");
        documented.insert(names[0].clone(), r.get(1).cloned().unwrap_or_default());
    }
    let code_names: BTreeSet<String> = code.keys().cloned().collect();
    let doc_names: BTreeSet<String> = documented.keys().cloned().collect();
    let mut problems = diff("flags", &doc_names, &code_names);
    // A documented default (the first `code` span of the default cell, or
    // this system's) is the one --help shows.
    for (name, cell) in &documented {
        let Some(Some(want)) = code.get(name) else {
            continue;
        };
        match default_of(cell) {
            Some(d) if d == *want => {}
            Some(d) => problems.push(format!(
                "{name}: docs say default `{d}`, --help says [default: {want}]"
            )),
            None => problems.push(format!(
                "{name}: --help says [default: {want}], the docs give none"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The keys the configuration structs of src/daemon/config.rs accept, from
/// their field names (camelCase, as serde renames them).
fn config_keys_from_source() -> BTreeSet<String> {
    let src = read("src/daemon/config.rs");
    let camel = |s: &str| {
        let mut out = String::new();
        let mut up = false;
        for ch in s.chars() {
            if ch == '_' {
                up = true;
            } else if up {
                out.push(ch.to_ascii_uppercase());
                up = false;
            } else {
                out.push(ch);
            }
        }
        out
    };
    let field = regex::Regex::new(r"^\s+([a-z_]+): ").unwrap();
    let mut keys = BTreeSet::new();
    for (strukt, prefix) in [
        ("Raw", ""),
        ("RawPolicy", "policy."),
        ("RawDriver", "drivers[]."),
    ] {
        let start = src
            .find(&format!("struct {strukt} {{"))
            .unwrap_or_else(|| panic!("src/daemon/config.rs: no struct {strukt}"));
        let body = &src[start..];
        let body = &body[..body.find("\n}").expect("end of struct")];
        for line in body.lines().skip(1) {
            if let Some(c) = field.captures(line) {
                let k = camel(&c[1]);
                // The two nested sections are documented by their keys.
                if prefix.is_empty() && (k == "policy" || k == "drivers") {
                    continue;
                }
                keys.insert(format!("{prefix}{k}"));
            }
        }
    }
    keys
}

/// A configuration with `key` set to `value` (YAML), otherwise minimal and
/// valid: the other keys a key needs are added, the ones it excludes left out.
fn config_with(key: &str, value: &str) -> String {
    let cluster = if key == "clusterName" || key == "clusterTag" {
        String::new()
    } else {
        "clusterName: docs-test\n".to_string()
    };
    if let Some(k) = key.strip_prefix("policy.") {
        return format!("{cluster}policy:\n  {k}: {value}\n");
    }
    if let Some(k) = key.strip_prefix("drivers[].") {
        let mut entry: Vec<String> = Vec::new();
        if k != "name" {
            entry.push("name: docs.csi.example.com".into());
        }
        match k {
            "volumeHandleRegex" | "volumeAttribute" => {}
            "volumeAttributeRegex" => entry.push("volumeAttribute: wwn".into()),
            _ => entry.push("volumeAttribute: wwn".into()),
        }
        entry.push(format!("{k}: {value}"));
        return format!("{cluster}drivers:\n  - {}\n", entry.join("\n    "));
    }
    format!("{cluster}{key}: {value}\n")
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_is_accepted() {
    let doc = read("docs/configuration.md");
    let rows = table(&doc, "docs/configuration.md", "Configuration file keys");
    let mut documented = BTreeMap::new();
    for r in &rows {
        assert!(r.len() >= 4, "docs/configuration.md: key row {r:?}");
        let key = spans(&r[0]);
        let example = spans(&r[2]);
        assert!(
            key.len() == 1 && example.len() == 1,
            "docs/configuration.md: a key row needs one `key` and one `example`: {r:?}"
        );
        documented.insert(key[0].clone(), (r[1].clone(), example[0].clone()));
    }
    let code = config_keys_from_source();
    let doc_keys: BTreeSet<String> = documented.keys().cloned().collect();
    let mut problems = diff("configuration keys", &doc_keys, &code);

    let base = Config::parse("base", "clusterName: docs-test\n").expect("minimal config");
    for (key, (default, example)) in &documented {
        // The example is accepted: the key exists and the value is valid.
        let text = config_with(key, example);
        if let Err(e) = Config::parse("docs", &text) {
            problems.push(format!("{key}: example `{example}` refused: {e}\n{text}"));
        }
        // A documented default changes nothing (keys of drivers[] have none).
        if let Some(d) = default_of(default).filter(|_| !key.starts_with("drivers[]")) {
            match Config::parse("docs", &config_with(key, &d)) {
                Ok(c) if c == base => {}
                Ok(_) => problems.push(format!(
                    "{key}: the documented default `{d}` is not the code's"
                )),
                Err(e) => problems.push(format!("{key}: default `{d}` refused: {e}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn unknown_config_keys_are_rejected_at_every_level() {
    // What makes the source-derived key set the whole truth: serde rejects
    // anything else, at the top, under policy and in a driver entry.
    for key in ["noSuchKey", "policy.noSuchKey", "drivers[].noSuchKey"] {
        let text = config_with(key, "1");
        let e = Config::parse("docs", &text)
            .map(|_| ())
            .expect_err(&format!("{key} was accepted:\n{text}"));
        assert!(e.to_string().contains("unknown field"), "{key}: {e}");
    }
}

#[test]
fn every_metric_is_documented_with_its_type_and_every_documented_metric_exists() {
    let problems = metrics_table(
        "Every metric",
        "Example queries",
        "src/daemon/metrics.rs",
        &Metrics::new().render(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_metric_of_the_failover_controller_is_documented_too() {
    let m = csi_fencer::k8s::failover::metrics::Metrics::new();
    // Vec metrics render only once they have a sample.
    m.taints.with_label_values(&["applied"]).inc();
    m.refusals.with_label_values(&["cordoned"]).inc();
    m.errors.with_label_values(&["taint", "api_error"]).inc();
    let problems = metrics_table(
        "The failover controller's metrics",
        "The failover controller's example queries",
        "src/k8s/failover/metrics.rs",
        &m.render(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What differs between the table under `section` of docs/metrics.md, the
/// metric names in `source` and the registry's `rendered` text; and which
/// documented metric has no query under `examples`.
fn metrics_table(section: &str, examples: &str, source: &str, rendered: &str) -> Vec<String> {
    let doc = read("docs/metrics.md");
    let rows = table(&doc, "docs/metrics.md", section);
    let mut documented = BTreeMap::new();
    for r in &rows {
        let name = spans(&r[0]);
        assert_eq!(name.len(), 1, "docs/metrics.md: metric row {r:?}");
        documented.insert(name[0].clone(), r.get(1).cloned().unwrap_or_default());
    }
    // Every metric name the code defines (vec metrics without samples are
    // not rendered, so the source is the complete list) ...
    let src = read(source);
    let lit = regex::Regex::new(r#""(csi_fencer_[a-z_]+)""#).unwrap();
    let code: BTreeSet<String> = lit.captures_iter(&src).map(|c| c[1].to_string()).collect();
    let doc_names: BTreeSet<String> = documented.keys().cloned().collect();
    let mut problems = diff("metrics", &doc_names, &code);
    // ... and every metric the registry exports, with its type.
    let type_line = regex::Regex::new(r"(?m)^# TYPE (\S+) (\S+)$").unwrap();
    let mut count = 0;
    for c in type_line.captures_iter(rendered) {
        count += 1;
        match documented.get(&c[1]) {
            Some(t) if t == &c[2] => {}
            Some(t) => problems.push(format!(
                "{}: docs say {t}, the registry says {}",
                &c[1], &c[2]
            )),
            None => problems.push(format!("{}: exported but not in docs/metrics.md", &c[1])),
        }
    }
    assert!(count > 0, "no # TYPE lines in:\n{rendered}");
    // Each has an example query.
    let queries = doc
        .split(&format!("## {examples}"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/metrics.md: no \"## {examples}\""));
    let queries = queries.split("\n## ").next().unwrap_or_default();
    for name in &doc_names {
        if !queries.contains(name.as_str()) {
            problems.push(format!("{name}: no example query in docs/metrics.md"));
        }
    }
    problems
}
