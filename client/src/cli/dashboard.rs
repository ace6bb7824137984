//! `vgas dashboard`: asks the master where its web dashboard is (`<prefix>.dashboard`, a
//! request only clients may make), prints the URL with its token, and opens it in a browser
//! when this session has a display.

use anyhow::{bail, Result};
use vgas_shared::wire::board::DashboardInfo;

use crate::api::Swarm;

/// Prints (and opens) the dashboard's URL; the exit code.
pub async fn run(swarm: &Swarm, print_only: bool) -> Result<i32> {
    let info: DashboardInfo = swarm
        .request(swarm.subjects.dashboard(), &serde_json::json!({}))
        .await?;
    let Some(url) = info.url else {
        bail!("the master runs without a dashboard: start it with `vgas-master --dashboard` (loopback) or `--dashboard ADDR`");
    };
    super::print_stdout(&format!("{url}\n"))?;
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !print_only && display {
        // The URL carries the token: it goes to the opener as an argument, never a shell.
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !opened.is_ok_and(|s| s.success()) {
            eprintln!("vgas: could not open a browser (xdg-open); open the URL above");
        }
    }
    Ok(0)
}
