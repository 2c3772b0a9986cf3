//! The dashboard's files over HTTP: `/` and every file under `root-orchestrator/dashboard/`
//! served from the binary, without a token, with their content types and cache validators;
//! every file the page or a module names is served; nothing is loaded from another origin.
#![allow(clippy::unwrap_used)]

mod common;

use common::TestRoot;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use std::path::{Path, PathBuf};

fn dashboard_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard")
}

/// Every file under the dashboard folder, as paths relative to it.
fn files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

/// The files a module imports (`from './x.js'`, `from '../x.js'`), relative to the folder.
fn imports(module: &str, text: &str) -> Vec<String> {
    let base: Vec<&str> = module.split('/').collect();
    let dir = &base[..base.len() - 1];
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if !(l.starts_with("import ") || l.starts_with("} from")) {
                return None;
            }
            let spec = l.rsplit(" from ").next()?.trim_end_matches(';');
            let spec = spec.trim_matches(|c| c == '\'' || c == '"');
            let mut parts: Vec<&str> = dir.to_vec();
            for seg in spec.split('/') {
                match seg {
                    "." => {}
                    ".." => {
                        parts.pop();
                    }
                    s => parts.push(s),
                }
            }
            Some(parts.join("/"))
        })
        .collect()
}

#[tokio::test]
async fn the_page_and_every_file_are_served_without_a_token() {
    let root = TestRoot::start().await;
    let http = reqwest::Client::new();

    let r = http.get(format!("{}/", root.api)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("connect-src 'self'"));
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/ui/app.js">"#));

    let mut all = Vec::new();
    files(&dashboard_dir(), "", &mut all);
    let mut named = Vec::new();
    for f in &all {
        let on_disk = std::fs::read_to_string(dashboard_dir().join(f)).unwrap();
        let r = http
            .get(format!("{}/ui/{f}", root.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "/ui/{f}");
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let want = match f.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("html") => "text/html",
            Some("svg") => "image/svg+xml",
            other => panic!("a file of unknown kind {other:?}: {f}"),
        };
        assert!(ct.starts_with(want), "/ui/{f}: {ct}");
        assert_eq!(
            r.text().await.unwrap(),
            on_disk,
            "/ui/{f} is the file as built"
        );
        // No CDN: nothing from another origin (an SVG's XML namespace is a name, not a load).
        let external = on_disk
            .match_indices("http")
            .map(|(i, _)| &on_disk[i..])
            .filter(|rest| rest.starts_with("http://") || rest.starts_with("https://"))
            .any(|rest| !rest.starts_with("http://www.w3.org/"));
        assert!(!external, "{f} names another origin");
        if f.ends_with(".js") {
            named.extend(imports(f, &on_disk));
        }
    }
    for src in page.split("/ui/").skip(1) {
        named.push(src.split('"').next().unwrap().to_owned());
    }
    for n in &named {
        assert!(
            all.contains(n),
            "{n} is named but not in the dashboard folder"
        );
    }
    assert!(named.iter().any(|n| n == "views/service.js"), "{named:?}");

    // Revalidation: the same ETag answers 304 without a body.
    let r = http
        .get(format!("{}/ui/app.js", root.api))
        .send()
        .await
        .unwrap();
    let etag = r.headers()[ETAG].clone();
    let r = http
        .get(format!("{}/ui/app.js", root.api))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    for missing in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/views"] {
        let r = http
            .get(format!("{}{missing}", root.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    // The API is still the API.
    let r = http
        .get(format!("{}/api/applications", root.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn imports_resolve_relative_to_the_module() {
    let text =
        "import { a } from '../api.js';\nimport * as v from './views/x.js';\nconst s = 'import';";
    assert_eq!(
        imports("views/deploy.js", text),
        vec!["api.js".to_owned(), "views/views/x.js".to_owned()]
    );
    assert_eq!(
        imports("app.js", "import { h } from './dom.js';"),
        vec!["dom.js"]
    );
}
