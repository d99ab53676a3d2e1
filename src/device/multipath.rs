//! The one-owner rule (docs/design.md §7): when multipathd has a `reservation_key`
//! for a map, it registers that key on every new path itself, and the two
//! owners undo each other's work (a fenced node's multipathd re-registers it).
//! This reads multipath.conf and its conf.d the way multipathd does, and
//! names every `reservation_key` it finds, so the daemon can refuse to start.

use std::fmt;
use std::path::{Path, PathBuf};

/// Which maps a `reservation_key` applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every map (`defaults`, `overrides`, or a `devices` entry).
    AllMaps,
    /// The map of this WWID (a `multipaths` entry).
    Wwid(String),
}

/// One `reservation_key` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// Its value (a key, or `file`).
    pub value: String,
    /// What it applies to.
    pub scope: Scope,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match &self.scope {
            Scope::AllMaps => "every map".to_string(),
            Scope::Wwid(w) => format!("the map of wwid {w}"),
        };
        write!(
            f,
            "{}:{}: reservation_key {} for {scope}",
            self.file.display(),
            self.line,
            self.value
        )
    }
}

fn words(line: &str) -> Vec<String> {
    let code = line.split(['#', '!']).next().unwrap_or("");
    let mut out = Vec::new();
    let mut quoted = false;
    let mut cur = String::new();
    for c in code.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' | '}' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A `multipath { }` entry being read.
#[derive(Default)]
struct Entry {
    wwid: Option<String>,
    keys: Vec<(usize, String)>,
}

/// Every `reservation_key` in one file's text, and its `config_dir`, if set.
fn parse(file: &Path, text: &str) -> (Vec<Owner>, Option<String>) {
    let mut owners = Vec::new();
    let mut config_dir = None;
    let mut stack: Vec<String> = Vec::new();
    // The open `multipath { }` entry: its wwid comes after its keys, maybe.
    let mut entry: Option<Entry> = None;
    for (i, line) in text.lines().enumerate() {
        let w = words(line);
        let mut k = 0;
        while k < w.len() {
            match w[k].as_str() {
                "}" => {
                    if stack.pop().as_deref() == Some("multipath") {
                        if let Some(Entry { wwid, keys }) = entry.take() {
                            for (line, value) in keys {
                                let scope = wwid.clone().map_or(Scope::AllMaps, Scope::Wwid);
                                owners.push(Owner {
                                    file: file.into(),
                                    line,
                                    value,
                                    scope,
                                });
                            }
                        }
                    }
                    k += 1;
                }
                name if w.get(k + 1).map(String::as_str) == Some("{") => {
                    stack.push(name.to_string());
                    if name == "multipath" {
                        entry = Some(Entry::default());
                    }
                    k += 2;
                }
                key => {
                    let value = w.get(k + 1).cloned().unwrap_or_default();
                    let top = stack.last().map(String::as_str);
                    match (key, top) {
                        ("reservation_key", Some("multipath")) => {
                            if let Some(e) = entry.as_mut() {
                                e.keys.push((i + 1, value));
                            }
                        }
                        ("wwid", Some("multipath")) => {
                            if let Some(e) = entry.as_mut() {
                                e.wwid = Some(value);
                            }
                        }
                        ("reservation_key", Some(_)) => owners.push(Owner {
                            file: file.into(),
                            line: i + 1,
                            value,
                            scope: Scope::AllMaps,
                        }),
                        ("config_dir", Some("defaults")) => config_dir = Some(value),
                        _ => {}
                    }
                    k += 2;
                }
            }
        }
    }
    (owners, config_dir)
}

/// Reads `conf` (for example /etc/multipath.conf, or /host/etc/multipath.conf
/// with the host's /etc mounted at /host/etc) and the `*.conf` files of its
/// config_dir (default /etc/multipath/conf.d, under the same root). A missing
/// multipath.conf means multipathd runs on defaults: no owner.
pub fn owners(conf: &Path) -> std::io::Result<Vec<Owner>> {
    let text = match std::fs::read_to_string(conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (mut all, dir) = parse(conf, &text);
    let root = conf
        .to_string_lossy()
        .strip_suffix("/etc/multipath.conf")
        .map(str::to_string)
        .unwrap_or_default();
    let dir = PathBuf::from(format!(
        "{root}{}",
        dir.unwrap_or_else(|| "/etc/multipath/conf.d".into())
    ));
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for f in files {
        all.extend(parse(&f, &std::fs::read_to_string(&f)?).0);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
defaults {
    user_friendly_names no
    # reservation_key 0x1 (commented out)
    config_dir "/etc/multipath/conf.d"
}
multipaths {
    multipath {
        reservation_key file
        wwid 36001405000000001
    }
    multipath { wwid 36001405000000002 }
    multipath { wwid 36001405000000003 reservation_key 0x3 }
}
overrides {
    reservation_key 0xabc
}
"#;

    #[test]
    fn finds_each_key_with_its_scope_and_line_and_skips_comments() {
        let (o, dir) = parse(Path::new("m.conf"), CONF);
        assert_eq!(dir.as_deref(), Some("/etc/multipath/conf.d"));
        assert_eq!(o.len(), 3, "{o:?}");
        assert_eq!(
            o[1].scope,
            Scope::Wwid("36001405000000003".into()),
            "a one-line entry closes"
        );
        assert_eq!(o[0].scope, Scope::Wwid("36001405000000001".into()));
        assert_eq!((o[0].line, o[0].value.as_str()), (9, "file"));
        assert_eq!(o[2].scope, Scope::AllMaps);
        assert_eq!(
            o[2].to_string(),
            "m.conf:16: reservation_key 0xabc for every map"
        );
    }

    #[test]
    fn reads_conf_d_under_the_same_root_and_a_missing_file_is_no_owner() {
        let d = crate::testutil::TempDir::new("mpconf");
        let etc = d.path().join("etc");
        std::fs::create_dir_all(etc.join("multipath/conf.d")).unwrap();
        std::fs::write(etc.join("multipath.conf"), "defaults {\n}\n").unwrap();
        std::fs::write(
            etc.join("multipath/conf.d/fence.conf"),
            "devices {\n device {\n  vendor LIO-ORG\n  reservation_key 0x7e57\n }\n}\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("multipath/conf.d/notes.txt"),
            "reservation_key 0x1\n",
        )
        .unwrap();
        let o = owners(&etc.join("multipath.conf")).unwrap();
        assert_eq!(o.len(), 1, "{o:?}");
        assert!(o[0].file.ends_with("conf.d/fence.conf"));
        assert!(owners(&d.path().join("none/etc/multipath.conf"))
            .unwrap()
            .is_empty());
    }
}
