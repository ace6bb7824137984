//! A build's sources offered by their submitter (`source.offered_by`): `vgas build` sends
//! its units' tasks without their text, which the worker asks the build for; with
//! `VGAS_OFFER_SOURCES=0` the text rides inside the tasks as before. Served here by the test
//! itself as a plain client would: a worker compiles what it is sent when it matches the
//! name, refuses other bytes, and ends an attempt whose source nobody offers with that reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use vgas_shared::config::Role;
use vgas_shared::farm::{BuildUpdate, CompileSpec, Source, SEGMENT_OBJECT};
use vgas_shared::names::ModuleRef;
use vgas_shared::wire::{Needs, TaskEvent, TaskKind, TaskOutcome, TaskQuery, TaskRecord, TaskSpec};
use vgas_shared::BuildId;
use vgas_tests::build::{make_clean, ok, skip_without_gcc, updates};
use vgas_tests::tasks::{request, run_task, Collected};
use vgas_tests::Swarm;

const ANSWER_C: &str = "int answer(void) { return 42; }\n";

/// A two-unit project whose `app` exits 0.
fn project(swarm: &Swarm) -> PathBuf {
    let dir = swarm.dir.path().join("offers");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        ("answer.c", ANSWER_C),
        (
            "main.c",
            "int answer(void);\nint main(void) { return answer() == 42 ? 0 : 1; }\n",
        ),
        (
            "Makefile",
            "app: main.o answer.o\n\t$(CC) -o $@ $^\nclean:\n\trm -f app *.o\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// The compile spec's source in the record of each unit's task a build queued.
async fn sources_of(client: &async_nats::Client, swarm: &Swarm, u: &[BuildUpdate]) -> Vec<Source> {
    let mut sources = Vec::new();
    for update in u {
        let BuildUpdate::Queued { task_id, .. } = update else {
            continue;
        };
        let q = TaskQuery {
            task_id: task_id.clone(),
        };
        let rec: TaskRecord = request(client, swarm.subjects.task_info(), &q)
            .await
            .unwrap();
        let compile = rec
            .spec
            .compile
            .expect("a compile task keeps its small spec");
        sources.push(compile.source);
    }
    sources
}

fn run_app(dir: &Path) {
    let status = std::process::Command::new(dir.join("app"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the app built through vgas runs: {status:?}"
    );
}

#[tokio::test]
async fn a_build_offers_its_sources_and_its_tasks_carry_none() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let dir = project(&swarm);
    let build = |extra: &[(&str, &str)]| {
        let args = ["build", "--json", "--", "make", "-j2"];
        updates(ok(&swarm.cli_in(&dir, &args, extra).unwrap()))
    };

    let u = build(&[]);
    run_app(&dir);
    let sources = sources_of(&client, &swarm, &u).await;
    assert_eq!(sources.len(), 2, "both units on the worker: {u:?}");
    for s in &sources {
        assert!(
            s.lz4.is_none() && s.text.is_none(),
            "no text in the task: {s:?}"
        );
        assert!(s.offered_by.is_some() && s.object.is_some(), "{s:?}");
    }

    // Offering off: the text rides inside the tasks (a flag change makes both units miss).
    make_clean(&dir);
    let u = build(&[("VGAS_OFFER_SOURCES", "0"), ("CFLAGS", "-O1")]);
    run_app(&dir);
    let sources = sources_of(&client, &swarm, &u).await;
    assert_eq!(sources.len(), 2, "{u:?}");
    for s in &sources {
        assert!(s.lz4.is_some() && s.offered_by.is_none(), "{s:?}");
    }
}

/// A compile task for `answer.c` whose source build `build` offers.
fn offered_task(build: &BuildId) -> TaskSpec {
    let gcc = vgas_client::toolchain::which("gcc", None).expect("gcc on PATH");
    let identity = vgas_client::toolchain::identify(&gcc, "gcc").unwrap();
    TaskSpec {
        kind: TaskKind::Compile,
        needs: Needs {
            capabilities: vec![identity.tag()],
            gpus: None,
        },
        compile: Some(CompileSpec {
            compiler: identity.hash.clone(),
            args: vec!["-O2".into()],
            source_name: "answer.c".into(),
            source: Source::offered(ModuleRef::of(ANSWER_C.as_bytes()), build.clone()),
            ..Default::default()
        }),
        deadline_s: Some(30),
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// Answers every request on build `build`'s source subject with `answer`, as a submitter
/// would, on a client's own connection; the returned handle stops it when aborted.
async fn serve(swarm: &Swarm, build: &BuildId, answer: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let server = swarm.connect(Role::Client).await.unwrap();
    let mut requests = server
        .subscribe(swarm.subjects.build_source(build))
        .await
        .unwrap();
    server.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                server.publish(reply, answer.clone().into()).await.unwrap();
            }
        }
    })
}

fn error_of(c: &Collected) -> String {
    match c.outcome() {
        TaskOutcome::Error { message } => message,
        other => panic!("not an error: {other:?}; {c:?}"),
    }
}

async fn run(swarm: &Swarm, client: &async_nats::Client, build: &BuildId) -> Collected {
    let spec = offered_task(build);
    run_task(client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_worker_asks_for_an_offered_source_and_checks_it() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let packed = |text: &str| Source::packed(text.as_bytes()).lz4.unwrap().0;

    // Nobody offers it (the build has ended): the attempt says so.
    let gone = BuildId::parse("ended1").unwrap();
    let c = run(&swarm, &client, &gone).await;
    assert!(error_of(&c).contains("no submitter offers"), "{c:?}");

    // Offered, but the bytes are not what the name says: refused, never compiled.
    let rogue = BuildId::parse("rogue1").unwrap();
    let serving = serve(&swarm, &rogue, packed("int answer(void) { return 7; }\n")).await;
    let c = run(&swarm, &client, &rogue).await;
    assert!(error_of(&c).contains("another hash"), "{c:?}");
    serving.abort();

    // Offered, but the unit has ended (an empty answer).
    let ended = BuildId::parse("unitended1").unwrap();
    let serving = serve(&swarm, &ended, Vec::new()).await;
    let c = run(&swarm, &client, &ended).await;
    assert!(error_of(&c).contains("no longer offers"), "{c:?}");
    serving.abort();

    // Offered as named: compiled, and the object comes back.
    let good = BuildId::parse("good1").unwrap();
    let serving = serve(&swarm, &good, packed(ANSWER_C)).await;
    let c = run(&swarm, &client, &good).await;
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 }, "{c:?}");
    assert!(
        c.events
            .iter()
            .any(|e| matches!(e, TaskEvent::Artifact { path, .. } if path == SEGMENT_OBJECT)),
        "{c:?}"
    );
    serving.abort();
}
