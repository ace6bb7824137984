use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;

fn entry(key: &str, object: &[u8]) -> CacheEntry {
    CacheEntry {
        object: key.to_owned(),
        size: object.len() as u64,
        sha256: sha256(object),
        stderr: "t.c:1: warning: x\n".into(),
        compile_ms: 42,
        created_ms: 1,
        side: BTreeMap::from([("su".to_owned(), "t.c:1:5:main\t16\tstatic\n".to_owned())]),
    }
}

fn key(n: u8) -> String {
    format!("{n:02x}{}", "ab".repeat(31))
}

#[tokio::test]
async fn an_object_comes_back_with_its_entry_and_a_manifest_as_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = HostCache::at(dir.path().join("cache"), 1 << 30);
    let k = key(1);
    assert!(cache.object(&k).await.is_none());
    let object = b"\x7fELF object bytes".to_vec();
    cache.put_object(&k, &entry(&k, &object), &object).await;
    let hit = cache.object(&k).await.expect("a hit");
    assert_eq!(hit.object, object);
    assert_eq!(hit.entry, entry(&k, &object));

    let direct = format!("direct.{}", key(2));
    assert!(cache.manifest(&direct).await.is_none());
    cache.put_manifest(&direct, b"manifest bytes").await;
    assert_eq!(cache.manifest(&direct).await.unwrap(), b"manifest bytes");

    assert_eq!(cache.purge(), 2);
    assert!(cache.object(&k).await.is_none());
    assert!(cache.manifest(&direct).await.is_none());
    assert_eq!(cache.stored_bytes(), 0);
}

#[tokio::test]
async fn a_damaged_or_cut_object_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = HostCache::at(dir.path().to_owned(), 1 << 30);
    for (n, damage) in [(3u8, "flip"), (4, "cut"), (5, "header")] {
        let k = key(n);
        let object = vec![n; 1000];
        cache.put_object(&k, &entry(&k, &object), &object).await;
        let path = cache.path(OBJECTS, &k).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        match damage {
            "flip" => *bytes.last_mut().unwrap() ^= 1,
            "cut" => bytes.truncate(bytes.len() - 1),
            _ => bytes[..4].copy_from_slice(&u32::MAX.to_be_bytes()),
        }
        std::fs::write(&path, bytes).unwrap();
        assert!(cache.object(&k).await.is_none(), "{damage}");
        assert!(!path.exists(), "{damage}: the damaged file is removed");
    }
}

#[tokio::test]
async fn keys_that_are_not_hashes_never_become_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cache = HostCache::at(dir.path().join("cache"), 1 << 30);
    for bad in ["", "../escape", "a/b", ".hidden", "x y", &"f".repeat(201)] {
        let object = b"o".to_vec();
        cache.put_object(bad, &entry(bad, &object), &object).await;
        assert!(cache.object(bad).await.is_none(), "{bad:?}");
    }
    assert_eq!(cache.stored_bytes(), 0);
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn a_sweep_keeps_the_most_recently_used_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = HostCache::at(root.clone(), 1 << 30);
    let object = vec![7u8; 10_000];
    let keys: Vec<String> = (10..14).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        cache.put_object(k, &entry(k, &object), &object).await;
        // Oldest first, a second apart.
        let at = SystemTime::now() - Duration::from_secs(100 - i as u64);
        let f = std::fs::File::options()
            .write(true)
            .open(cache.path(OBJECTS, k).unwrap())
            .unwrap();
        f.set_modified(at).unwrap();
    }
    // The oldest is read now: the most recently used.
    assert!(cache.object(&keys[0]).await.is_some());
    let each = cache.stored_bytes() / 4;
    assert_eq!(sweep(&root, each * 4), 0, "at the bound nothing goes");
    // Bound of three entries: down to 80% of it, so two go, the least recently used.
    assert_eq!(sweep(&root, each * 3), 2);
    let kept: Vec<bool> = futures::future::join_all(keys.iter().map(|k| cache.object(k)))
        .await
        .iter()
        .map(Option::is_some)
        .collect();
    assert_eq!(kept, [true, false, false, true]);
}

#[test]
fn the_bound_comes_from_the_environment_and_zero_turns_the_tier_off() {
    // One test touches the variable, so parallel tests never see it half set.
    let dir = Path::new("/state");
    std::env::set_var(ENV_HOST_CACHE_MB, "0");
    assert!(HostCache::under(dir).is_none());
    std::env::set_var(ENV_HOST_CACHE_MB, "5");
    let c = HostCache::under(dir).unwrap();
    assert_eq!(
        (c.root.as_path(), c.max_bytes),
        (Path::new("/state/cache"), 5 << 20)
    );
    std::env::set_var(ENV_HOST_CACHE_MB, "lots");
    assert!(HostCache::under(dir).is_none());
    std::env::remove_var(ENV_HOST_CACHE_MB);
    assert_eq!(
        HostCache::under(dir).unwrap().max_bytes,
        DEFAULT_HOST_CACHE_BYTES
    );
}
