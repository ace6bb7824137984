//! What the dashboard costs the master: 1,000 simulated workers heartbeating every second,
//! the master without the dashboard next to the master with it and a page open (a browser's
//! view stream of the swarm page, read as Chromium would), same run. For each: the master's
//! CPU share over the window, its resident memory at the end, and for the open page the
//! updates and bytes it received (a view is pushed at most every 500 ms, 50 rows a page).
//!
//! Run: `scripts/bench.sh` (release binaries), or
//! `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench dashboard`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use vgas_shared::config::Role;
use vgas_tests::bench::{cpu_seconds, rss_mib, HeartbeatFlood};
use vgas_tests::{free_port, Swarm};

const SIM_WORKERS: usize = 1_000;
const WINDOW: Duration = Duration::from_secs(10);
const TOKEN: &str = "dashboard-bench-token-0123456789";

/// Reads the swarm page's view stream for `window`: events and bytes received.
async fn read_page(addr: &str, window: Duration) -> (usize, usize) {
    let url = format!("http://{addr}/api/stream?view=swarm&page=0");
    let resp = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("the view stream");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let (mut events, mut bytes) = (0, 0);
    let end = Instant::now() + window;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(end.into(), body.next()).await {
        bytes += chunk.len();
        events += chunk.windows(11).filter(|w| w == b"event: view").count();
    }
    (events, bytes)
}

async fn run(dashboard: bool) {
    let mut swarm = Swarm::start().await.expect("swarm");
    let addr = format!("127.0.0.1:{}", free_port());
    let args: Vec<&str> = if dashboard {
        vec!["--dashboard", &addr]
    } else {
        vec![]
    };
    let master = swarm
        .spawn_at(
            vgas_tests::Placement::Local,
            "master",
            "vgas-master",
            &args,
            &[("VGAS_DASHBOARD_TOKEN", TOKEN)],
        )
        .expect("master");
    let client = swarm.connect(Role::Client).await.expect("client");
    let flood = HeartbeatFlood::start(&swarm, &client, SIM_WORKERS).await;
    let cpu0 = cpu_seconds(master.pid());
    let t0 = Instant::now();
    let page = if dashboard {
        Some(read_page(&addr, WINDOW).await)
    } else {
        tokio::time::sleep(WINDOW).await;
        None
    };
    let secs = t0.elapsed().as_secs_f64();
    let share = 100.0 * (cpu_seconds(master.pid()) - cpu0) / secs;
    let rss = rss_mib(master.pid());
    flood.stop().await;
    let (label, events, kib_s) = match page {
        Some((e, b)) => (
            "with the dashboard, swarm page open",
            format!("{:.1}/s", e as f64 / secs),
            format!("{:.1}", b as f64 / 1024.0 / secs),
        ),
        None => ("without the dashboard", "-".into(), "-".into()),
    };
    println!(
        "| {label} | {SIM_WORKERS} | {:.0} s | {share:.1}% | {rss:.1} | {events} | {kib_s} |",
        WINDOW.as_secs_f64()
    );
}

fn main() {
    vgas_tests::bench::block_on(async {
        println!("\nThe dashboard's cost on the master, 1,000 simulated workers\n");
        println!("| master | workers | window | master CPU (one core) | master RSS MiB | page updates | page KiB/s |");
        println!("|---|---|---|---|---|---|---|");
        for dashboard in [false, true, false, true] {
            run(dashboard).await;
        }
    });
}
