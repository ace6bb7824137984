//! The web dashboard in a real browser (Debian's headless Chromium through chromedriver):
//! a real swarm, the URL `vgas dashboard` prints, and on its pages the worker count following
//! a worker that joins and one that is SIGKILLed, a task's output while it runs, a build's
//! units with their origins, and LLM spend after a gateway call to the local fake provider.
//! Each page is saved as a screenshot (`VGAS_SCREENSHOTS_DIR`, default
//! `target/dashboard-screenshots`; `docs/dashboard` holds the committed ones), and a page that
//! logs a console error fails the test. No page may show a key or the vault's passphrase.

use std::path::PathBuf;
use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::limits::ABNORMAL_AFTER;
use vgas_shared::wire::SubmitReply;
use vgas_shared::TaskId;
use vgas_tests::browser::Browser;
use vgas_tests::build::{skip_without_gcc, updates};
use vgas_tests::gateway::{
    complete, llm_toml, req, start_master_with, vault_store, OPENAI_KEY, PASS,
};
use vgas_tests::provider::{openai_stream, FakeProvider};
use vgas_tests::tasks::{request, sh};
use vgas_tests::{free_port, repo_root, wait_for, Swarm, WAIT};

/// How long a page may take to show a change: a view is pushed at most every 500 ms.
const SHOWN: Duration = Duration::from_secs(15);

fn shots_dir() -> PathBuf {
    let dir = std::env::var_os("VGAS_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/dashboard-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Goes to `route` of the dashboard, fails on any console error so far.
async fn open(b: &Browser, base: &str, route: &str) {
    b.goto(&format!("{base}/#/{route}")).await.unwrap();
}

async fn no_console_errors(b: &Browser, page: &str) {
    let errors = b.console_errors().await.unwrap();
    assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
}

async fn no_secrets(b: &Browser, page: &str) {
    let html = b
        .exec(
            "return document.documentElement.outerHTML;",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    let html = html.as_str().unwrap_or_default();
    for secret in [OPENAI_KEY, PASS] {
        assert!(!html.contains(secret), "a secret on the {page} page");
    }
}

/// A tiny C project: three units and a link.
fn project(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, body) in [
        ("a.c", "int a(void) { return 1; }\n"),
        ("b.c", "int b(void) { return 2; }\n"),
        (
            "main.c",
            "int a(void); int b(void);\nint main(void) { return a() + b() - 3; }\n",
        ),
    ] {
        std::fs::write(dir.join(name), body).unwrap();
    }
    std::fs::write(
        dir.join("Makefile"),
        "app: a.o b.o main.o\n\t$(CC) -o $@ $^\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\nclean:\n\trm -f *.o app\n",
    )
    .unwrap();
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    if skip_without_gcc() {
        return;
    }
    let Some(browser) = Browser::start().await.unwrap() else {
        return;
    };
    let shots = shots_dir();
    let fake = FakeProvider::start().await;
    let mut swarm = Swarm::start().await.unwrap();
    std::fs::write(
        swarm.state_dir().join("llm.toml"),
        llm_toml(&fake, "daily_budget_usd = 5.0\nmonthly_budget_usd = 50.0"),
    )
    .unwrap();
    vault_store(&swarm, "openai", OPENAI_KEY);
    let addr = format!("127.0.0.1:{}", free_port());
    let _master = start_master_with(&mut swarm, &["--dashboard", &addr], &[]).await;
    let _w1 = swarm.worker("w1", 2, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();

    // The URL with its token, as a user gets it.
    let out = swarm.cli(&["dashboard", "--print"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let base = format!("http://{addr}");
    assert!(url.starts_with(&format!("{base}/?token=")), "{url}");
    browser.goto(&url).await.unwrap();
    let landed = browser
        .exec("return location.href;", serde_json::json!([]))
        .await
        .unwrap();
    assert!(
        !landed.as_str().unwrap_or_default().contains("token"),
        "the token stays out of the address bar: {landed}"
    );

    // The swarm: a worker joins, then one is SIGKILLed and turns abnormal.
    let count = |n: &'static str| move |t: &str| t == n;
    browser
        .wait_text("one worker", "#worker-count", SHOWN, count("1"))
        .await
        .unwrap();
    let mut w2 = swarm.worker("w2", 1, &[]).unwrap();
    browser
        .wait_text("the second worker", "#worker-count", SHOWN, count("2"))
        .await
        .unwrap();
    browser
        .wait_count("w2's row", "#workers tr[data-worker=\"w2\"]", 1, SHOWN)
        .await
        .unwrap();
    browser.screenshot(&shots.join("swarm.png")).await.unwrap();
    no_console_errors(&browser, "swarm").await;
    w2.kill();
    browser
        .wait_text(
            "w2 abnormal",
            "#abnormal-count",
            ABNORMAL_AFTER + SHOWN,
            count("1"),
        )
        .await
        .unwrap();
    browser
        .wait_text("one live worker again", "#worker-count", SHOWN, count("1"))
        .await
        .unwrap();
    browser
        .wait_count(
            "w2 listed abnormal",
            "#abnormal tr[data-worker=\"w2\"]",
            1,
            SHOWN,
        )
        .await
        .unwrap();

    // A task's page shows its output while it runs (from when it is opened, as `vgas watch`:
    // the task waits a little before it prints).
    let id = TaskId::random();
    let mut spec = sh("sleep 2; echo first-line; sleep 4; echo second-line");
    spec.task_id = Some(id.clone());
    let _: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    open(&browser, &base, &format!("task/{id}")).await;
    browser
        .wait_text("the first line", "#task-output", SHOWN, |t| {
            t.contains("first-line")
        })
        .await
        .unwrap();
    let state = browser
        .text("#task-state")
        .await
        .unwrap()
        .unwrap_or_default();
    let output = browser
        .text("#task-output")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        state == "running" && !output.contains("second-line"),
        "the output shows while the task runs: {state} {output:?}"
    );
    browser.screenshot(&shots.join("task.png")).await.unwrap();
    browser
        .wait_text("the task finished", "#task-state", WAIT, |t| {
            t == "finished"
        })
        .await
        .unwrap();
    let output = browser
        .text("#task-output")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(output.contains("second-line"), "{output:?}");
    no_console_errors(&browser, "task").await;
    open(&browser, &base, "tasks").await;
    browser
        .wait_count(
            "the task among the finished",
            &format!("#finished tr[data-task=\"{id}\"]"),
            1,
            SHOWN,
        )
        .await
        .unwrap();
    browser.screenshot(&shots.join("tasks.png")).await.unwrap();
    no_console_errors(&browser, "tasks").await;

    // A build: its units on a worker, then after `make clean` from the cache.
    let dir = swarm.dir.path().join("proj");
    project(&dir);
    let build = || {
        let out = swarm
            .cli_in(&dir, &["build", "--json", "--", "make", "-j2"], &[])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!updates(&out).is_empty(), "{out:?}");
    };
    // The builds page lists each build as its updates arrive, newest first.
    let listed = || async {
        let v = browser
            .exec(
                "return [...document.querySelectorAll('#builds tr[data-build]')].map(r => r.dataset.build);",
                serde_json::json!([]),
            )
            .await
            .unwrap();
        serde_json::from_value::<Vec<String>>(v).unwrap_or_default()
    };
    open(&browser, &base, "builds").await;
    build();
    let cold = wait_for("the first build listed", SHOWN, || async {
        let l = listed().await;
        (l.len() == 1).then(|| l[0].clone())
    })
    .await
    .unwrap();
    let clean = std::process::Command::new("make")
        .arg("clean")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(clean.status.success());
    build();
    let warm = wait_for("the second build listed", SHOWN, || async {
        let l = listed().await;
        (l.len() == 2).then(|| l[0].clone())
    })
    .await
    .unwrap();
    assert_ne!(cold, warm);
    browser.screenshot(&shots.join("builds.png")).await.unwrap();
    no_console_errors(&browser, "builds").await;
    open(&browser, &base, &format!("build/{cold}")).await;
    browser
        .wait_count(
            "units on a worker",
            "#units tr[data-origin=\"worker\"]",
            3,
            SHOWN,
        )
        .await
        .unwrap();
    browser.screenshot(&shots.join("build.png")).await.unwrap();
    open(&browser, &base, &format!("build/{warm}")).await;
    browser
        .wait_count(
            "units from the cache",
            "#units tr[data-origin=\"cache\"]",
            3,
            SHOWN,
        )
        .await
        .unwrap();
    no_console_errors(&browser, "build").await;

    // LLM spend after a call through the gateway.
    fake.push(openai_stream(&["Hello", " there"], 40, 12, 0));
    let worker_conn = swarm.connect(Role::Worker).await.unwrap();
    let (_, end) = complete(&worker_conn, &swarm.subjects, &req("openai", "gpt-4o-mini")).await;
    end.unwrap();
    open(&browser, &base, "llm").await;
    browser
        .wait_count(
            "the call's usage row",
            "#usage tr[data-provider=\"openai\"][data-model=\"gpt-4o-mini\"]",
            1,
            SHOWN,
        )
        .await
        .unwrap();
    browser
        .wait_count(
            "the provider's budget",
            "#providers tr[data-provider=\"openai\"]",
            1,
            SHOWN,
        )
        .await
        .unwrap();
    browser.screenshot(&shots.join("llm.png")).await.unwrap();
    no_console_errors(&browser, "llm").await;
    for page in ["swarm", "tasks", "builds", "llm"] {
        open(&browser, &base, page).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        no_secrets(&browser, page).await;
    }
    no_console_errors(&browser, "every page").await;
    browser.quit().await;
}
