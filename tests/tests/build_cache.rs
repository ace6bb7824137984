//! The build cache's size bound through real processes: a master started with a 1 MiB bound
//! evicts the oldest objects once the objects pass it, a rebuild compiles exactly the evicted
//! units again, and `vgas build --stats` reports what the cache holds. This host's tier in
//! front of it (`VGAS_HOST_CACHE_MB`) still serves what the swarm evicted, and
//! `--purge-cache` empties both.

use std::process::Command;
use std::time::Duration;

use vgas_tests::build::{ok, origins, updates};
use vgas_tests::Swarm;

/// Bytes of initialised data in each unit: three of them pass a 1 MiB bound, two do not.
const UNIT_DATA_BYTES: usize = 400 * 1024;

/// MiB of objects `vgas build --stats` says the cache holds.
fn cached_mib(swarm: &Swarm) -> f64 {
    let out = swarm.cli(&["build", "--stats"]).unwrap();
    let text = String::from_utf8_lossy(ok(&out).stdout.as_slice()).into_owned();
    text.split_whitespace()
        .find_map(|w| w.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no size in {text:?}"))
}

/// Starts the swarm's master with a build cache bound of 1 MiB (its index the 16 MiB floor).
fn master_bound_to_one_mib(swarm: &mut Swarm) -> vgas_tests::Proc {
    let config = swarm.dir.path().join("master.toml");
    std::fs::write(&config, "[master]\nbuild_cache_mb = 1\n").unwrap();
    swarm
        .master(&["--config", config.to_str().unwrap()])
        .unwrap()
}

#[tokio::test]
async fn the_cache_evicts_the_oldest_objects_past_its_bound() {
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    }
    let mut swarm = Swarm::start().await.unwrap();
    let _master = master_bound_to_one_mib(&mut swarm);
    let _worker = swarm.worker("w1", 2, &[]).unwrap();
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();

    let dir = swarm.dir.path().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let mut makefile = String::from("all: a.o b.o c.o\n");
    for (i, u) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(
            dir.join(format!("{u}.c")),
            format!(
                "const char data_{u}[{UNIT_DATA_BYTES}] = {{ {} }};\n",
                i + 1
            ),
        )
        .unwrap();
        makefile.push_str(&format!("{u}.o: {u}.c\n\t$(CC) -c {u}.c -o {u}.o\n"));
    }
    std::fs::write(dir.join("Makefile"), makefile).unwrap();
    let build_with = |env: &[(&str, &str)]| {
        swarm
            .cli_in(&dir, &["build", "--json", "--", "make", "-j3"], env)
            .unwrap()
    };
    let build = || build_with(&[]);
    // The swarm's cache alone: this host's tier off.
    let swarm_only = || build_with(&[("VGAS_HOST_CACHE_MB", "0")]);
    let clean = || {
        for u in ["a", "b", "c"] {
            let _ = std::fs::remove_file(dir.join(format!("{u}.o")));
        }
    };

    assert_eq!(origins(&updates(ok(&build()))), (3, 0, 0));
    let before = cached_mib(&swarm);
    assert!(
        before > 1.0,
        "three 400 KiB objects are cached: {before} MiB"
    );

    // The sweeper runs every 10 s: within 30 s the objects are under the bound.
    vgas_tests::wait_for("the sweep", Duration::from_secs(30), || async {
        (cached_mib(&swarm) < 1.0).then_some(())
    })
    .await
    .unwrap();

    clean();
    let again = swarm_only();
    let (remote, cached, here) = origins(&updates(ok(&again)));
    assert_eq!(here, 0);
    assert_eq!(remote + cached, 3);
    assert!(
        (1..3).contains(&remote),
        "the evicted units compile again, the kept ones come from the cache: {remote} compiled, {cached} cached"
    );

    // This host kept all three from the first build.
    clean();
    assert_eq!(origins(&updates(ok(&build()))), (0, 3, 0));
    let stats = swarm.cli(&["build", "--stats"]).unwrap();
    let text = String::from_utf8_lossy(&ok(&stats).stdout).into_owned();
    assert!(text.contains("on this host: "), "{text}");

    // A purge empties the swarm's cache and this host's: everything compiles again.
    ok(&swarm.cli(&["build", "--purge-cache"]).unwrap());
    clean();
    assert_eq!(origins(&updates(ok(&build()))), (3, 0, 0));
}

/// Bytes of each manifest the next test fills the index with: a few hundred pass the index
/// bucket's 16 MiB floor (a unit's real manifest is a few KiB: tens of thousands of units).
const MANIFEST_BYTES: usize = 60 * 1024;

/// Manifests put at most before the index must have refused one (16 MiB of them and room).
const MAX_FILL: usize = 2 * 16 * 1024 * 1024 / MANIFEST_BYTES;

#[tokio::test]
async fn a_full_index_is_cut_back_and_a_purge_empties_it() {
    use vgas_client::farm::cache::BuildCache;

    let mut swarm = Swarm::start().await.unwrap();
    let _master = master_bound_to_one_mib(&mut swarm);
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = swarm.subjects.clone();
    let cache = vgas_tests::wait_for("the cache's buckets", Duration::from_secs(20), || async {
        BuildCache::open(&js, &subjects).await.ok()
    })
    .await
    .unwrap();
    let index = js
        .get_key_value(subjects.build_cache_bucket())
        .await
        .unwrap();

    // Manifests (the keys direct mode writes) until the bucket refuses one, as it would
    // after enough distinct units on a long-lived swarm; then smaller ones into what room
    // is left, until not even a small one fits.
    let mut put = 0;
    for size in [MANIFEST_BYTES, 1024, 16] {
        let body = bytes::Bytes::from(vec![b'm'; size]);
        loop {
            assert!(put < MAX_FILL, "the index bucket is bounded");
            if index
                .put(format!("direct.fill{put}"), body.clone())
                .await
                .is_err()
            {
                break;
            }
            put += 1;
        }
    }
    assert!(put > 100, "{put} manifests went in first");
    let object = vec![7u8; 1024];
    let side = std::collections::BTreeMap::new();
    assert!(
        cache.store("unit-a", &object, &side, "", 5).await.is_err(),
        "a full index takes no entry"
    );

    // The master's sweep (every 10 s) cuts the oldest entries back: the cache records again.
    vgas_tests::wait_for("the index cut back", Duration::from_secs(30), || async {
        cache.store("unit-a", &object, &side, "", 5).await.ok()
    })
    .await
    .unwrap();
    let hit = cache
        .lookup("unit-a")
        .await
        .unwrap()
        .expect("stored, found");
    assert_eq!(hit.object, object);
    assert!(
        index.get("direct.fill0").await.unwrap().is_none(),
        "the oldest manifests went first"
    );
    assert!(
        index
            .get(format!("direct.fill{}", put - 1))
            .await
            .unwrap()
            .is_some(),
        "the newest manifests stay"
    );

    // A purge empties the whole index, manifests included (a client's grants allow it).
    ok(&swarm.cli(&["build", "--purge-cache"]).unwrap());
    assert!(index
        .get(format!("direct.fill{}", put - 1))
        .await
        .unwrap()
        .is_none());
    assert!(cache.lookup("unit-a").await.unwrap().is_none());
    let mut stream = js
        .get_stream(vgas_shared::Subjects::kv_stream(
            &subjects.build_cache_bucket(),
        ))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}
