//! A real browser for the dashboard tests: Debian's headless Chromium driven through
//! chromedriver over the W3C WebDriver protocol (plain JSON over HTTP, spoken here with
//! reqwest), with the browser's console log read back so a page that logs an error fails
//! its test. `scripts/test.sh` installs `chromium` and `chromium-driver`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{free_port, wait_for};

/// Where Debian puts them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser session; chromedriver is killed on drop.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless session, or `None` (printing why) where Chromium
    /// is not installed outside CI. In CI a missing browser is a failure.
    pub async fn start() -> Result<Option<Browser>> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            if std::env::var_os("CI").is_some() {
                bail!("{CHROMIUM} or {CHROMEDRIVER} is missing: scripts/test.sh installs chromium and chromium-driver");
            }
            eprintln!("SKIPPED: the browser tests need Debian's chromium and chromium-driver");
            return Ok(None);
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut b = Browser {
            http,
            base: format!("http://127.0.0.1:{port}"),
            driver,
        };
        let status = format!("{}/status", b.base);
        let h = b.http.clone();
        wait_for("chromedriver", Duration::from_secs(20), || {
            let (h, u) = (h.clone(), status.clone());
            async move {
                h.get(u)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1366,900"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let v = b.call("POST", "/session", caps).await?;
        let id = v["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?;
        b.base = format!("{}/session/{id}", b.base);
        Ok(Some(b))
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let v: Value = resp.json().await.context("chromedriver's answer")?;
        if let Some(err) = v["value"].get("error") {
            bail!("webdriver {method} {path}: {err} {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn exec(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The text of the first element matching `css`, if any.
    pub async fn text(&self, css: &str) -> Result<Option<String>> {
        let v = self
            .exec(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await?;
        Ok(v.as_str().map(|s| s.trim().to_owned()))
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> Result<usize> {
        let v = self
            .exec(
                "return document.querySelectorAll(arguments[0]).length;",
                json!([css]),
            )
            .await?;
        Ok(v.as_u64().unwrap_or(0) as usize)
    }

    /// Waits until the text of `css` satisfies `ok`; the last text seen.
    pub async fn wait_text(
        &self,
        what: &str,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        wait_for(what, timeout, || async {
            self.text(css).await.ok().flatten().filter(|t| ok(t))
        })
        .await
    }

    /// Waits until `css` matches at least `n` elements.
    pub async fn wait_count(
        &self,
        what: &str,
        css: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        wait_for(what, timeout, || async {
            self.count(css).await.ok().filter(|c| *c >= n).map(drop)
        })
        .await
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.call("GET", "/screenshot", Value::Null).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot data")?)?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// The console messages at level SEVERE (errors, failed loads) since the last call.
    pub async fn console_errors(&self) -> Result<Vec<String>> {
        let v = self
            .call("POST", "/se/log", json!({ "type": "browser" }))
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// Ends the session.
    pub async fn quit(self) {
        let _ = self.call("DELETE", "", Value::Null).await;
    }
}
