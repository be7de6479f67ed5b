//! `ilp-connector peers | routes | health | accounts --admin URL`: a node's admin port as a table (or the
//! raw JSON with `--json`). Sends `Authorization: Bearer $ADMIN_TOKEN` when that is set.

use super::exit;

/// What to show.
#[derive(Debug, Clone, Copy)]
pub enum View {
    Peers,
    Routes,
    Health,
    Accounts,
}

impl View {
    fn path(self) -> &'static str {
        match self {
            View::Peers => "/peers",
            View::Routes => "/routes",
            View::Health => "/health",
            View::Accounts => "/accounts",
        }
    }
}

pub fn run(view: View, admin: &str, json: bool) -> u8 {
    let url = format!("{}{}", admin.trim_end_matches('/'), view.path());
    let mut req = ureq::get(&url).timeout(std::time::Duration::from_secs(10));
    if let Some(token) = std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    // /health answers 503 (with its body) while the node is not ready: still an answer.
    let (status, body) = match req.call() {
        Ok(r) => (r.status(), r.into_string()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string()),
        Err(e) => {
            eprintln!("error: {url}: {e}");
            return exit::FAILED;
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {url}: {e}");
            return exit::FAILED;
        }
    };
    let value: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("error: {url}: HTTP {status}: {}", body.trim());
            return exit::FAILED;
        }
    };
    if json {
        println!("{value}");
    } else {
        print!("{}", table(view, &value));
    }
    match (view, status) {
        (_, 200) => exit::OK,
        (View::Health, 503) => exit::FAILED,
        _ => {
            eprintln!("error: {url}: HTTP {status}");
            exit::FAILED
        }
    }
}

/// Text of a JSON value for a table cell.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under a header, columns padded to their widest cell.
fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r);
    }
    out
}

fn table(view: View, v: &serde_json::Value) -> String {
    let list = v.as_array().cloned().unwrap_or_default();
    match view {
        View::Peers => columns(
            &["ID", "RELATION", "LINKS/SHARD", "URL"],
            list.iter()
                .map(|p| {
                    vec![
                        cell(&p["id"]),
                        cell(&p["relation"]),
                        cell(&p["linksPerShard"]),
                        cell(&p["url"]),
                    ]
                })
                .collect(),
        ),
        View::Routes => columns(
            &["PREFIX", "NEXT HOP", "ORIGIN", "PATH"],
            list.iter()
                .map(|r| {
                    let prefix = cell(&r["prefix"]);
                    let shown = if prefix.is_empty() {
                        "(default)".into()
                    } else {
                        prefix
                    };
                    let path = r["path"].as_array().map_or(String::new(), |p| {
                        p.iter().map(cell).collect::<Vec<_>>().join(" ")
                    });
                    vec![shown, cell(&r["nextHop"]), cell(&r["origin"]), path]
                })
                .collect(),
        ),
        View::Accounts => columns(
            &[
                "PEER",
                "ASSET",
                "BALANCE",
                "RESERVED IN",
                "RESERVED OUT",
                "MINIMUM",
                "MAXIMUM",
                "SETTLE",
            ],
            list.iter()
                .map(|a| {
                    let asset = format!("{} {}", cell(&a["assetCode"]), cell(&a["assetScale"]));
                    if a["accounted"] != true {
                        return vec![cell(&a["id"]), asset, "unlimited".into()];
                    }
                    let settle = if a["needsSettlement"] == true {
                        "needed"
                    } else {
                        "-"
                    };
                    vec![
                        cell(&a["id"]),
                        asset,
                        cell(&a["balance"]),
                        cell(&a["reservedIn"]),
                        cell(&a["reservedOut"]),
                        cell(&a["minimum"]),
                        cell(&a["maximum"]),
                        settle.into(),
                    ]
                })
                .collect(),
        ),
        View::Health => {
            let mut out = String::new();
            for key in [
                "status",
                "address",
                "assetCode",
                "assetScale",
                "addressMismatch",
                "connectedPeers",
                "uptimeMs",
            ] {
                if let Some(x) = v.get(key) {
                    out += &format!("{key:<16}{}\n", cell(x));
                }
            }
            if let Some(peers) = v["peers"].as_object() {
                out += "\n";
                out += &columns(
                    &["PEER", "LINK"],
                    peers
                        .iter()
                        .map(|(id, up)| {
                            let state = if up.as_bool() == Some(true) {
                                "up"
                            } else {
                                "down"
                            };
                            vec![id.clone(), state.into()]
                        })
                        .collect(),
                );
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let peers = serde_json::json!([{"id":"b","relation":"peer","linksPerShard":[1,0],"url":"ws://h:1"}]);
        assert_eq!(
            table(View::Peers, &peers),
            "ID  RELATION  LINKS/SHARD  URL\nb   peer      [1,0]        ws://h:1\n"
        );
        let routes = serde_json::json!([
            {"prefix":"test.c","nextHop":"c","origin":"config"},
            {"prefix":"test.d","nextHop":"c","origin":"learned","path":["test.c","test.d"]},
            {"prefix":"","nextHop":"up","origin":"default"}
        ]);
        assert_eq!(
            table(View::Routes, &routes),
            "PREFIX     NEXT HOP  ORIGIN   PATH\n\
             test.c     c         config\n\
             test.d     c         learned  test.c test.d\n\
             (default)  up        default\n"
        );
        let accounts = serde_json::json!([
            {"id":"alice","assetCode":"USD","assetScale":2,"accounted":true,"balance":"-700",
             "reservedIn":"0","reservedOut":"100","minimum":"-1000","maximum":null,"needsSettlement":true},
            {"id":"bob","assetCode":"XRP","assetScale":9,"accounted":false}
        ]);
        assert_eq!(
            table(View::Accounts, &accounts),
            "PEER   ASSET  BALANCE    RESERVED IN  RESERVED OUT  MINIMUM  MAXIMUM  SETTLE\n\
             alice  USD 2  -700       0            100           -1000    -        needed\n\
             bob    XRP 9  unlimited\n"
        );
    }
}
