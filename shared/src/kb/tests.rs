//! Unit tests of `kb`: chunk bounds, overlap and UTF-8 safety, tokenizing, and BM25 ranking
//! (IDF, saturation, length normalisation, ties, determinism).

use super::*;

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Words `w0 w1 ...`, each unique, so a chunk's words tell where in the document it is.
fn numbered_words(n: usize, per_line: usize, lines_per_para: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("w{i}"));
        if (i + 1) % (per_line * lines_per_para) == 0 {
            s.push_str("\n\n");
        } else if (i + 1) % per_line == 0 {
            s.push('\n');
        } else {
            s.push(' ');
        }
    }
    s
}

fn word_numbers(chunk: &Chunk) -> Vec<usize> {
    chunk
        .text
        .split_whitespace()
        .map(|w| w[1..].parse().expect("numbered word"))
        .collect()
}

fn index_of(docs: &[(&str, &str)]) -> Bm25Index {
    Bm25Index::build(
        docs.iter()
            .flat_map(|(src, text)| chunk_document(src, text))
            .collect(),
    )
}

#[test]
fn empty_and_whitespace_documents_give_no_chunks() {
    assert!(chunk_document("a.md", "").is_empty());
    assert!(chunk_document("a.md", " \n\n\t  \r\n ").is_empty());
    assert!(chunk_document("a.md", &" ".repeat(5 * CHUNK_CHARS)).is_empty());
}

#[test]
fn short_document_is_one_trimmed_chunk() {
    let chunks = chunk_document("notes/a.md", "\n  Hello, arena allocator.\n\n");
    assert_eq!(
        chunks,
        vec![Chunk {
            source: "notes/a.md".into(),
            index: 0,
            text: "Hello, arena allocator.".into(),
        }]
    );
}

#[test]
fn chunks_are_bounded_cover_the_document_and_overlap() {
    let text = numbered_words(3000, 12, 5);
    let chunks = chunk_document("big.md", &text);
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        assert_eq!(c.source, "big.md");
        assert!(
            chars(&c.text) <= CHUNK_CHARS,
            "chunk {i}: {}",
            chars(&c.text)
        );
        if i + 1 < chunks.len() {
            assert!(chars(&c.text) >= MIN_SPLIT_CHARS - 4, "chunk {i} too small");
        }
    }
    let words: Vec<Vec<usize>> = chunks.iter().map(word_numbers).collect();
    assert_eq!(words[0][0], 0);
    assert_eq!(*words.last().unwrap().last().unwrap(), 2999);
    for (i, w) in words.iter().enumerate() {
        // Whole words only, contiguous, in document order.
        assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "chunk {i}");
    }
    for (i, pair) in words.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        let prev_last = *prev.last().unwrap();
        // No gap, some overlap, and progress.
        assert!(
            next[0] <= prev_last,
            "chunks {i} and {} do not overlap",
            i + 1
        );
        assert!(next[0] > prev[0]);
        let shared: Vec<String> = (next[0]..=prev_last).map(|n| format!("w{n}")).collect();
        let overlap = chars(&shared.join(" "));
        assert!(overlap <= CHUNK_OVERLAP, "overlap {overlap}");
        assert!(overlap >= CHUNK_OVERLAP / 2, "overlap {overlap}");
        assert!(chunks[i].text.ends_with(shared.last().unwrap().as_str()));
    }
}

#[test]
fn chunks_end_at_paragraph_breaks_when_there_are_some() {
    // Paragraphs of about 330 chars: every cut can be at a blank line.
    let text = numbered_words(2000, 10, 6);
    let chunks = chunk_document("p.md", &text);
    assert!(chunks.len() > 5);
    for c in &chunks[..chunks.len() - 1] {
        let last = *word_numbers(c).last().unwrap();
        assert_eq!((last + 1) % 60, 0, "chunk {} ends at w{last}", c.index);
    }
}

#[test]
fn chunks_end_at_line_breaks_without_paragraphs() {
    let text = numbered_words(2000, 10, usize::MAX / 10);
    assert!(!text.contains("\n\n"));
    let chunks = chunk_document("l.md", &text);
    for c in &chunks[..chunks.len() - 1] {
        let last = *word_numbers(c).last().unwrap();
        assert_eq!((last + 1) % 10, 0, "chunk {} ends at w{last}", c.index);
    }
}

#[test]
fn multibyte_text_is_cut_on_char_boundaries() {
    // No whitespace at all: hard cuts at CHUNK_CHARS chars, an overlap of CHUNK_OVERLAP.
    let text: String = "日本語のテキスト🦀é".repeat(400);
    let chunks = chunk_document("ja.md", &text);
    assert!(chunks.len() > 3);
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(chars(&c.text), CHUNK_CHARS);
    }
    for pair in chunks.windows(2) {
        let tail: String = pair[0]
            .text
            .chars()
            .skip(CHUNK_CHARS - CHUNK_OVERLAP)
            .collect();
        assert!(pair[1].text.starts_with(&tail));
    }
    // Chunks laid out at their strides rebuild the text exactly.
    let stride = CHUNK_CHARS - CHUNK_OVERLAP;
    let mut rebuilt: String = String::new();
    for c in &chunks[..chunks.len() - 1] {
        rebuilt.extend(c.text.chars().take(stride));
    }
    rebuilt.push_str(&chunks.last().unwrap().text);
    assert_eq!(rebuilt, text);

    // Multi-byte words with multi-byte whitespace between them.
    let text = "Grüße\u{3000}Ünïcödé naïve 🦀🦀 ".repeat(200);
    let chunks = chunk_document("de.md", &text);
    assert!(chunks.len() > 3);
    for c in &chunks {
        assert!(chars(&c.text) <= CHUNK_CHARS);
        assert!(text.contains(&c.text));
        let first = c.text.split(char::is_whitespace).next().unwrap();
        assert!(
            ["Grüße", "Ünïcödé", "naïve", "🦀🦀"].contains(&first),
            "{first}"
        );
    }
}

#[test]
fn tokenize_lowercases_splits_and_drops_noise() {
    assert_eq!(
        tokenize("The Arena-Allocator's snake_case __init__ x 42 Größe, TCP/IP; Vec::new()"),
        vec![
            "arena",
            "allocator",
            "snake_case",
            "init",
            "42",
            "größe",
            "tcp",
            "ip",
            "vec",
            "new"
        ]
    );
    assert!(tokenize("").is_empty());
    assert!(tokenize("a I the and of to it ... __ !!").is_empty());
}

#[test]
fn stop_words_are_sorted_for_binary_search() {
    assert!(STOP_WORDS.windows(2).all(|p| p[0] < p[1]));
    for w in STOP_WORDS {
        assert!(tokenize(w).is_empty(), "{w}");
    }
}

const ARENA: &str = "An arena allocator hands out memory by bumping a pointer inside a large \
    block. Freeing is done for the whole arena at once, which makes allocation cheap and \
    avoids fragmentation. Arena allocators suit compilers and request-scoped data.";
const TCP: &str = "TCP retransmission: when a segment is not acknowledged before the \
    retransmission timeout (RTO) expires, the sender sends it again and doubles the RTO. \
    Fast retransmit triggers on three duplicate ACKs without waiting for the timeout.";
const BLOOM: &str = "A bloom filter is a probabilistic set: k hash functions set bits in a \
    bit array. A lookup may return a false positive but never a false negative. The false \
    positive rate depends on the number of bits per element and the number of hashes.";

#[test]
fn query_picks_the_right_document() {
    let index = index_of(&[("arena.md", ARENA), ("tcp.md", TCP), ("bloom.md", BLOOM)]);
    assert_eq!(index.len(), 3);
    for (query, want) in [
        ("arena allocator", "arena.md"),
        ("how does the allocator free memory", "arena.md"),
        ("TCP retransmission timeout", "tcp.md"),
        ("duplicate acks", "tcp.md"),
        ("bloom filter false positive", "bloom.md"),
        ("Hash functions", "bloom.md"),
    ] {
        let hits = index.search(query, 3);
        assert!(!hits.is_empty(), "{query}");
        assert_eq!(hits[0].1.source, want, "{query}: {hits:?}");
        assert!(hits.windows(2).all(|p| p[0].0 >= p[1].0));
        assert!(hits.iter().all(|h| h.0 > 0.0));
    }
    // Only documents that contain a query term come back.
    let hits = index.search("retransmission", 3);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].1.source, "tcp.md");
}

#[test]
fn rare_terms_weigh_more_than_common_ones() {
    // "common" is in every chunk, "rare" in one; the chunks have equal lengths.
    let index = index_of(&[
        ("0.md", "common alpha filler"),
        ("1.md", "common rare filler"),
        ("2.md", "common beta filler"),
        ("3.md", "common gamma filler"),
        ("4.md", "common common delta"),
    ]);
    let rare = index.search("rare", 5);
    let common = index.search("common", 5);
    assert_eq!(rare.len(), 1);
    assert_eq!(common.len(), 5);
    assert!(rare[0].0 > 2.0 * common[0].0, "{rare:?} vs {common:?}");
    // The chunk with the rare term beats the one with the common term twice.
    let both = index.search("common rare", 5);
    assert_eq!(both[0].1.source, "1.md");
    assert_eq!(both[1].1.source, "4.md");
    // A common term still adds: the rare chunk scores more with it than without.
    assert!(both[0].0 > rare[0].0);
}

#[test]
fn term_frequency_saturates_and_long_chunks_are_normalized() {
    let index = index_of(&[
        ("once.md", "cache miss one two three four five"),
        ("thrice.md", "cache cache cache one two three four"),
        (
            "long.md",
            "cache one two three four five six seven eight nine ten eleven",
        ),
    ]);
    let hits = index.search("cache", 3);
    let score = |src: &str| hits.iter().find(|h| h.1.source == src).unwrap().0;
    assert!(score("thrice.md") > score("once.md"));
    assert!(score("thrice.md") < 3.0 * score("once.md"), "K1 saturation");
    assert!(
        score("once.md") > score("long.md"),
        "B length normalization"
    );
}

#[test]
fn empty_query_or_no_match_finds_nothing() {
    let index = index_of(&[("arena.md", ARENA), ("tcp.md", TCP), ("bloom.md", BLOOM)]);
    for query in ["", "   ", "the and of it", "?!", "zebra quantum", "a"] {
        assert!(index.search(query, 5).is_empty(), "{query:?}");
    }
    assert!(index.search("arena", 0).is_empty());
    let empty = Bm25Index::build(Vec::new());
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(empty.search("arena", 5).is_empty());
    let blank = Bm25Index::build(vec![Chunk {
        source: "x.md".into(),
        index: 0,
        text: "the of !!".into(),
    }]);
    assert_eq!(blank.len(), 1);
    assert!(blank.search("the x", 5).is_empty());
}

#[test]
fn k_limits_results_and_ties_go_by_chunk_order() {
    let chunks: Vec<Chunk> = (0..20)
        .map(|i| Chunk {
            source: format!("{i}.md"),
            index: 0,
            text: if i % 2 == 0 {
                "shared token here".into()
            } else {
                "other words only".into()
            },
        })
        .collect();
    let index = Bm25Index::build(chunks);
    let hits = index.search("token", 3);
    let sources: Vec<&str> = hits.iter().map(|h| h.1.source.as_str()).collect();
    assert_eq!(sources, ["0.md", "2.md", "4.md"]);
    assert!(hits.iter().all(|h| h.0 == hits[0].0));
    assert_eq!(index.search("token", 100).len(), 10);
    assert_eq!(index.search("token", 1)[0].1.source, "0.md");
}

#[test]
fn search_and_chunking_are_deterministic() {
    let doc = format!("{ARENA}\n\n{TCP}\n\n{BLOOM}\n\n").repeat(20);
    let a = chunk_document("all.md", &doc);
    let b = chunk_document("all.md", &doc);
    assert_eq!(a, b);
    let ia = Bm25Index::build(a);
    let ib = Bm25Index::build(b);
    for query in ["arena allocator", "false positive timeout", "memory bits"] {
        let ha: Vec<(u64, &Chunk)> = ia
            .search(query, 7)
            .into_iter()
            .map(|(s, c)| (s.to_bits(), c))
            .collect();
        let hb: Vec<(u64, &Chunk)> = ib
            .search(query, 7)
            .into_iter()
            .map(|(s, c)| (s.to_bits(), c))
            .collect();
        assert_eq!(ha.len(), 7);
        assert_eq!(ha, hb);
        // Repeating the query changes nothing either.
        let again: Vec<u64> = ia.search(query, 7).iter().map(|h| h.0.to_bits()).collect();
        assert_eq!(again, ha.iter().map(|h| h.0).collect::<Vec<_>>());
    }
    // A repeated query term counts once.
    let once = ia.search("bloom", 3);
    let twice = ia.search("bloom Bloom BLOOM", 3);
    assert_eq!(once, twice);
}

#[test]
fn index_keeps_at_most_max_chunks() {
    let chunks: Vec<Chunk> = (0..MAX_KB_CHUNKS + 5)
        .map(|i| Chunk {
            source: "gen.md".into(),
            index: i as u32,
            text: format!("t{i}"),
        })
        .collect();
    let index = Bm25Index::build(chunks);
    assert_eq!(index.len(), MAX_KB_CHUNKS);
    assert_eq!(
        index.chunks().last().unwrap().text,
        format!("t{}", MAX_KB_CHUNKS - 1)
    );
    assert_eq!(index.search("t7", 5)[0].1.text, "t7");
    assert!(index.search(&format!("t{MAX_KB_CHUNKS}"), 5).is_empty());
}

#[test]
fn chunk_round_trips_through_serde() {
    let c = Chunk {
        source: "docs/ä.md".into(),
        index: 3,
        text: "x\ny".into(),
    };
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Chunk>(&json).unwrap(), c);
}
