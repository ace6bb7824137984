use super::*;

#[test]
fn version_requirements() {
    let m = |req: &str, v: &str| VersionReq::parse(req).unwrap().matches(v);
    assert!(m("12", "12.2.0"));
    assert!(m("12.2", "12.2.0"));
    assert!(!m("12.3", "12.2.0"));
    assert!(m("=12.2.0", "12.2.0"));
    assert!(m(">=11", "12.2.0"));
    assert!(!m("<12", "12.2.0"));
    assert!(m("<13", "12.2.0"));
    assert!(!m(">12", "12.2.0"));
    assert!(m(">12.1", "12.2.0"));
    assert!(!m("12", "garbage"));
    for bad in ["", "x", ">=", "1.2.3.4.5", "~1"] {
        assert!(VersionReq::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn env_specs_are_checked() {
    let ok = EnvSpec {
        toolchain: "gcc".into(),
        version: Some(">=10".into()),
        ..Default::default()
    };
    ok.validate().unwrap();
    let bad = [
        EnvSpec {
            toolchain: "tcc".into(),
            ..Default::default()
        },
        EnvSpec {
            toolchain: "conda".into(),
            ..Default::default()
        },
        EnvSpec {
            toolchain: "gcc".into(),
            packages: vec!["numpy".into()],
            ..Default::default()
        },
        EnvSpec {
            toolchain: "gcc".into(),
            identity: Some("sha256:zz".into()),
            ..Default::default()
        },
        EnvSpec {
            toolchain: "conda".into(),
            packages: vec!["--force".into()],
            ..Default::default()
        },
    ];
    for b in bad {
        assert!(b.validate().is_err(), "{b:?}");
    }
    // The same spec keeps the same key; another spec another.
    assert_eq!(ok.key(), ok.clone().key());
    let other = EnvSpec {
        version: Some("12".into()),
        ..ok.clone()
    };
    assert_ne!(ok.key(), other.key());
}

#[test]
fn sources_round_trip_and_refuse_bombs() {
    let text = "int main(void) { return 0; }\n".repeat(100);
    let s = Source::packed(text.as_bytes());
    s.validate().unwrap();
    assert_eq!(s.inline_bytes(1 << 20).unwrap().unwrap(), text.as_bytes());
    assert!(
        s.inline_bytes(10).is_err(),
        "a size past the cap is refused"
    );
    let both = Source {
        text: Some("x".into()),
        lz4: s.lz4.clone(),
        ..Default::default()
    };
    assert!(both.validate().is_err());
    // Offered by a build's submitter: by name, and only with one.
    let name = crate::names::ModuleRef::of(text.as_bytes());
    let build = crate::ids::BuildId::parse("b1").unwrap();
    let offered = Source::offered(name.clone(), build.clone());
    offered.validate().unwrap();
    assert_eq!(offered.object.as_deref(), Some(name.as_str()));
    assert_eq!(offered.inline_bytes(1 << 20).unwrap(), None);
    let json = serde_json::to_string(&offered).unwrap();
    assert_eq!(serde_json::from_str::<Source>(&json).unwrap(), offered);
    let without_name = Source {
        offered_by: Some(build),
        ..s.clone()
    };
    assert!(without_name.validate().is_err());
    let bad_build = json.replace("\"b1\"", "\"b.1\"");
    assert!(
        serde_json::from_str::<Source>(&bad_build).is_err(),
        "a build id is one subject token"
    );
    assert!(Source::default().validate().is_err());
    let garbage = Source {
        lz4: Some(packed::Base64Bytes(vec![0; 6])),
        ..Default::default()
    };
    assert!(garbage.inline_bytes(1 << 20).is_err());
}

#[test]
fn cache_keys_change_with_what_shapes_the_object() {
    let args = vec!["-O2".to_string()];
    let k = |c: &str, l: Language, a: &[String], n: &str, cwd: &str, src: &[u8]| {
        cache_key(c, l, a, n, cwd, &crate::names::ModuleRef::of(src))
    };
    let base = k("sha256:a", Language::C, &args, "a.c", "/x", b"int x;");
    assert_eq!(base.len(), 64);
    assert_eq!(
        base,
        k("sha256:a", Language::C, &args, "a.c", "/x", b"int x;")
    );
    assert_ne!(
        base,
        k("sha256:b", Language::C, &args, "a.c", "/x", b"int x;")
    );
    assert_ne!(
        base,
        k("sha256:a", Language::Cxx, &args, "a.c", "/x", b"int x;")
    );
    assert_ne!(
        base,
        k(
            "sha256:a",
            Language::C,
            &["-O0".into()],
            "a.c",
            "/x",
            b"int x;"
        )
    );
    assert_ne!(
        base,
        k("sha256:a", Language::C, &args, "b.c", "/x", b"int x;")
    );
    assert_ne!(
        base,
        k("sha256:a", Language::C, &args, "a.c", "/x", b"int y;")
    );
    // The directory only matters with debug info.
    assert_eq!(
        base,
        k("sha256:a", Language::C, &args, "a.c", "/y", b"int x;")
    );
    let g = vec!["-g".to_string()];
    assert_ne!(
        k("sha256:a", Language::C, &g, "a.c", "/x", b"int x;"),
        k("sha256:a", Language::C, &g, "a.c", "/y", b"int x;")
    );
    // Fields are length-prefixed: moving a byte from one to the next changes the key.
    assert_ne!(
        k(
            "sha256:a",
            Language::C,
            &["-O2".into(), "x".into()],
            "a.c",
            "/x",
            b""
        ),
        k("sha256:a", Language::C, &["-O2x".into()], "a.c", "/x", b"")
    );
}

#[test]
fn segment_flags_that_touch_other_files_are_refused() {
    for a in [
        "-o",
        "-ofoo",
        "-c",
        "-MD",
        "-fplugin=x.so",
        "@args",
        "foo.c",
        "-Wp,-MD,x",
    ] {
        assert!(is_forbidden_compile_arg(a), "{a}");
    }
    for a in [
        "-O2",
        "-Wall",
        "-std=c99",
        "-fPIC",
        "-g",
        "-DNDEBUG",
        "-march=native",
    ] {
        assert!(!is_forbidden_compile_arg(a), "{a}");
    }
}

#[test]
fn a_segment_names_its_files_by_content_inside_the_task_directory() {
    let object = format!("sha256:{}", "ab".repeat(32));
    let spec = |files: Vec<SegmentFile>| CompileSpec {
        compiler: object.clone(),
        source_name: "a.c".into(),
        source: Source {
            text: Some("int x;".into()),
            ..Default::default()
        },
        files,
        ..Default::default()
    };
    let file = |path: &str, object: &str| SegmentFile {
        path: path.into(),
        object: object.into(),
    };
    assert!(spec(vec![file("src/a.h", &object)]).validate().is_ok());
    for bad in [
        file("../a.h", &object),
        file("/etc/passwd", &object),
        file("a.h", "a.h"),
        file("a.h", "sha256:12"),
    ] {
        let err = spec(vec![bad.clone()]).validate().unwrap_err().to_string();
        assert!(
            err.contains("a.h") || err.contains("path"),
            "{bad:?}: {err}"
        );
    }
    let many = vec![file("a.h", &object); crate::limits::MAX_INPUT_FILES + 1];
    assert!(spec(many).validate().is_err());
    // On the wire: only a path and an object; anything else is refused.
    let json = r#"{"path":"a.h","object":"sha256:00","mode":1}"#;
    assert!(serde_json::from_str::<SegmentFile>(json).is_err());
}

#[test]
fn diagnostics_merge_dedup_and_order() {
    let one = "b.c: In function 'main':\n\
               b.c:5:37: warning: unused variable 'y' [-Wunused-variable]\n    \
               5 | int y;\n      |     ^\n\
               inc.h:2:1: warning: no newline\n";
    let two = "a.c:9:3: error: expected ';' before '}' token\n\
               inc.h:2:1: warning: no newline\n\
               a.c:1: note: something without a column\n";
    let r = DiagnosticReport::merge([one, two]);
    assert_eq!((r.errors, r.warnings, r.notes), (1, 2, 1));
    let order: Vec<(&str, u64)> = r.items.iter().map(|d| (d.file.as_str(), d.line)).collect();
    assert_eq!(order, [("a.c", 1), ("a.c", 9), ("b.c", 5), ("inc.h", 2)]);
    let inc = r.items.iter().find(|d| d.file == "inc.h").unwrap();
    assert_eq!(
        inc.count, 2,
        "a header's warning seen by two segments is one item, counted"
    );
    let b = r.items.iter().find(|d| d.file == "b.c").unwrap();
    assert!(b.context.contains("int y;"), "{b:?}");
    assert_eq!(b.column, 37);
    assert_eq!(b.message, "unused variable 'y' [-Wunused-variable]");
}

#[test]
fn plans_are_checked() {
    let seg = PlanSegment {
        name: "main.c".into(),
        source: Source {
            text: Some("int main(void){return 0;}".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let plan = BuildPlan {
        compiler: EnvSpec {
            toolchain: "gcc".into(),
            ..Default::default()
        },
        args: vec!["-O2".into()],
        segments: vec![seg.clone()],
        link: Some(LinkSpec {
            output: "app".into(),
            args: vec!["-lm".into()],
        }),
        preprocessed: false,
        build_id: None,
        steps: Vec::new(),
    };
    plan.validate().unwrap();
    let mut bad_id = plan.clone();
    bad_id.build_id = Some("a.b".into());
    assert!(bad_id.validate().is_err());
    let mut dup = plan.clone();
    dup.segments.push(seg);
    assert!(dup.validate().is_err());
    let mut evil = plan.clone();
    evil.link.as_mut().unwrap().output = "../../etc/passwd".into();
    assert!(evil.validate().is_err());
    let mut evil = plan.clone();
    evil.link.as_mut().unwrap().args = vec!["-o/etc/x".into()];
    assert!(evil.validate().is_err());
    for arg in [
        "-Wl,-T,/etc/passwd",
        "-Wl,@/etc/shadow",
        "-Wl,--plugin=/tmp/x.so",
        "-Wl,-Map=/tmp/m",
        "-l../x",
        "-L/tmp",
    ] {
        let mut evil = plan.clone();
        evil.link.as_mut().unwrap().args = vec![arg.into()];
        assert!(evil.validate().is_err(), "{arg} is accepted");
    }
    let mut fine = plan.clone();
    fine.link.as_mut().unwrap().args = vec![
        "-lm".into(),
        "-lstdc++".into(),
        "-Wl,--as-needed".into(),
        "-Wl,-z,now".into(),
        "-pthread".into(),
    ];
    fine.validate().unwrap();
    let mut evil = plan.clone();
    evil.args = vec!["-fplugin=/tmp/x.so".into()];
    assert!(evil.validate().is_err());
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<BuildPlan>(&json).unwrap(), plan);
    assert!(serde_json::from_str::<BuildPlan>(
        r#"{"compiler":{"toolchain":"gcc"},"segments":[],"typo":1}"#
    )
    .is_err());
}

#[test]
fn an_lz4_block_is_unpacked_within_its_cap_or_refused_before_unpacking() {
    let text = b"static int x;\n".repeat(1000);
    let packed = lz4_flex::compress_prepend_size(&text);
    assert_eq!(super::unpack_source(&packed, 1 << 20).unwrap(), text);
    let short = super::unpack_source(&packed[..3], 1 << 20).unwrap_err();
    assert!(short.to_string().contains("too short"), "{short}");
    // A prefix that promises 4 GiB is refused by the cap alone, whatever follows it.
    let bomb = [0xff, 0xff, 0xff, 0xff, 0x00];
    let refused = super::unpack_source(&bomb, 1 << 20).unwrap_err();
    assert!(refused.to_string().contains("over 1048576"), "{refused}");
    let cut = super::unpack_source(&packed[..packed.len() / 2], 1 << 20).unwrap_err();
    assert!(cut.to_string().contains("bad lz4 block"), "{cut}");
}
