//! TLS off loopback, with the `tls.conf` that `vgas init` writes: nats-server in one network
//! namespace, a worker in another, the test (client) in a third. A plain-text connection is
//! refused; a capture of the server's traffic (tcpdump) while a task runs holds none of the
//! task's input, environment or output in clear, while the same run without TLS shows them
//! (the control that the capture sees what it should).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::wire::TaskOutcome;
use vgas_tests::netns::{Host, Lan};
use vgas_tests::{run_task, sh, wait_for, Placement, Swarm};

/// tcpdump on `host`'s every interface, for traffic to or from `port`, into `file`.
fn capture(host: &Host, port: u16, file: &Path) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", &host.ns, "tcpdump", "-i", "any", "-U", "-n", "-w",
        ])
        .arg(file)
        .args(["tcp", "port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (Debian package tcpdump; scripts/test.sh installs it)")
}

/// Runs one task whose stdin, env and output hold `marker` on a swarm spread over `lan`,
/// with or without TLS; returns the captured bytes.
async fn captured_run(lan: &Lan, tls: bool, marker: &str) -> Vec<u8> {
    let (h0, h1) = (lan.host(0).clone(), lan.host(1).clone());
    let mut swarm = if tls {
        Swarm::start_tls_on(Some(h0.clone())).await.unwrap()
    } else {
        Swarm::start_on(Some(h0.clone())).await.unwrap()
    };
    let pcap = swarm.dir.path().join("capture.pcap");
    let mut dump = capture(&h0, swarm.port, &pcap);
    wait_for("tcpdump to start", Duration::from_secs(10), || async {
        std::fs::metadata(&pcap)
            .is_ok_and(|m| m.len() > 0)
            .then_some(())
    })
    .await
    .unwrap();
    let _master = swarm
        .spawn_at(Placement::On(&h0), "master", "vgas-master", &[], &[])
        .unwrap();
    let _worker = swarm
        .worker_at(Placement::On(&h1), "w1", &["--slots", "1"])
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let mut spec = sh("cat; echo \"env=$MARK\"");
    spec.stdin = format!("stdin={marker}\n");
    spec.env.insert("MARK".into(), marker.into());
    let c = run_task(&client, &swarm.subjects, spec, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(c.stdout, format!("stdin={marker}\nenv={marker}\n"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(dump.id() as i32, libc::SIGTERM) };
    dump.wait().unwrap();
    std::fs::read(&pcap).unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn off_loopback_plain_text_is_refused_and_nothing_travels_in_clear() {
    let Some(lan) = Lan::new(2).unwrap() else {
        return;
    };
    let marker = format!("tls-marker-{}", vgas_shared::TaskId::random());

    // The control: without TLS the capture holds the marker.
    let plain = captured_run(&lan, false, &marker).await;
    assert!(
        contains(&plain, &marker),
        "the plain-text capture misses the task"
    );

    let sealed = captured_run(&lan, true, &marker).await;
    assert!(
        sealed.len() > 4096,
        "the TLS capture is empty ({} bytes)",
        sealed.len()
    );
    assert!(
        !contains(&sealed, &marker),
        "the task's data crossed the wire in clear"
    );
    assert!(
        !contains(&sealed, "\"cmd\""),
        "a task spec crossed the wire in clear"
    );

    // A plain-text client is turned away.
    let h0 = lan.host(0).clone();
    let swarm = Swarm::start_tls_on(Some(h0.clone())).await.unwrap();
    let stream = TcpStream::connect((h0.addr, swarm.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let mut w = stream;
    let _ = w.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(
        !rest.contains("PONG"),
        "a plain-text client was served: {rest}"
    );

    // A client that does not trust the swarm's CA cannot connect either.
    let mut creds = swarm.creds(Role::Client);
    creds.ca = None;
    let untrusting = vgas_client::connect::auth_options(Some(&creds))
        .unwrap()
        .connect(swarm.url())
        .await;
    assert!(untrusting.is_err(), "connected without the swarm's CA");
}

#[tokio::test]
async fn with_mutual_tls_a_client_needs_its_certificate_too() {
    let mut swarm = Swarm::start_tls_with(None, &["--mutual-tls"])
        .await
        .unwrap();
    let conf = std::fs::read_to_string(swarm.state_dir().join("tls.conf")).unwrap();
    assert!(conf.contains("verify: true"), "{conf}");
    let _master = swarm.master(&[]).unwrap();
    let _worker = swarm.worker("w1", 1, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let c = run_task(&client, &swarm.subjects, sh("echo mutual"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "mutual\n");
    // A node issued now gets a certificate too.
    let out = swarm.cli(&["node", "add", "worker", "n1"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node =
        vgas_shared::config::Credentials::load(&swarm.state_dir().join("creds/nodes/n1.creds"))
            .unwrap();
    assert!(node.cert.is_some() && node.key.is_some());
    // The right key and CA but no client certificate: refused.
    let mut creds = swarm.creds(Role::Client);
    assert!(creds.cert.is_some());
    creds.cert = None;
    creds.key = None;
    let bare = vgas_client::connect::auth_options(Some(&creds))
        .unwrap()
        .connect(swarm.url())
        .await;
    assert!(bare.is_err(), "connected without a client certificate");
}

#[tokio::test]
async fn a_worker_finds_a_tls_master_by_mdns_and_one_without_its_ca_says_why_it_stays_out() {
    let Some(lan) = Lan::new(3).unwrap() else {
        return;
    };
    let (h0, h1, h2) = (
        lan.host(0).clone(),
        lan.host(1).clone(),
        lan.host(2).clone(),
    );
    let mut swarm = Swarm::start_tls_on(Some(h0.clone())).await.unwrap();
    let _master = swarm
        .spawn_at(Placement::On(&h0), "master", "vgas-master", &[], &[])
        .unwrap();
    // No URL: the advert gives the address and the CA's fingerprint, the credentials the CA.
    let _w1 = swarm
        .worker_at(Placement::Discover(&h1), "w1", &["--slots", "1"])
        .unwrap();
    // Credentials without the CA (a plain-text swarm's): this master is not for it.
    let mut plain = swarm.creds(Role::Worker);
    plain.ca = None;
    let plain_path = swarm.dir.path().join("plain-worker.creds");
    std::fs::write(&plain_path, toml::to_string(&plain).unwrap()).unwrap();
    let plain_path = plain_path.display().to_string();
    let w2 = swarm
        .worker_at(Placement::Discover(&h2), "w2", &["--creds", &plain_path])
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let c = run_task(&client, &swarm.subjects, sh("echo found"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "found\n");
    wait_for(
        "w2 to say why it stays out",
        Duration::from_secs(15),
        || async { w2.log_text().contains("other TLS CA").then_some(()) },
    )
    .await
    .unwrap();
}
