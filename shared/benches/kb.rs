//! Knowledge-base search latency: `Bm25Index::search` (k = 5) over 10,000 chunks of generated
//! text, for a query of mid-frequency and rare words and for one of the three most common words
//! (the longest postings, the worst case). The build time of the index is printed once.
//!
//! The text is deterministic: words from a vocabulary of 3,000 made-up words drawn with Zipf
//! frequencies (the word of rank r has weight 1 / (r + 1)), about 1,200 chars per chunk as
//! `chunk_document` makes them.
//!
//! Run: `cargo bench -p vgas-shared --bench kb`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use vgas_shared::kb::{tokenize, Bm25Index, Chunk, CHUNK_CHARS};

const CHUNKS: usize = 10_000;
const VOCABULARY: usize = 3_000;

/// splitmix64: a fixed seed gives the same corpus on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Word `i` of the vocabulary: 2 to 4 consonant-vowel syllables, the digits of `i` in base 70,
/// so every word is distinct and a single search term.
fn word(i: usize) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let syllables = CONSONANTS.len() * VOWELS.len();
    let mut n = i;
    let mut w = String::new();
    for _ in 0..2 + i % 3 {
        let s = n % syllables;
        n /= syllables;
        w.push(CONSONANTS[s / VOWELS.len()] as char);
        w.push(VOWELS[s % VOWELS.len()] as char);
    }
    w
}

fn corpus() -> (Vec<String>, Vec<Chunk>) {
    let vocabulary: Vec<String> = (0..VOCABULARY).map(word).collect();
    for w in &vocabulary {
        assert_eq!(
            tokenize(w),
            std::slice::from_ref(w),
            "vocabulary word {w} is not one term"
        );
    }
    // Cumulative Zipf weights; a draw is a binary search in them.
    let mut cdf = Vec::with_capacity(VOCABULARY);
    let mut total = 0.0;
    for r in 0..VOCABULARY {
        total += 1.0 / (r + 1) as f64;
        cdf.push(total);
    }
    let mut rng = Rng(0x6b62_2d62_656e_6368);
    let mut chunks = Vec::with_capacity(CHUNKS);
    for i in 0..CHUNKS {
        let target = CHUNK_CHARS * 3 / 4 + rng.below(CHUNK_CHARS / 4);
        let mut text = String::with_capacity(CHUNK_CHARS + 32);
        let mut sentence_left = 0;
        while text.len() < target {
            let u = rng.unit() * total;
            let w = &vocabulary[cdf.partition_point(|&c| c < u).min(VOCABULARY - 1)];
            if sentence_left == 0 {
                if !text.is_empty() {
                    text.push_str(". ");
                }
                sentence_left = 6 + rng.below(15);
                let mut cs = w.chars();
                text.extend(cs.next().map(|c| c.to_ascii_uppercase()));
                text.push_str(cs.as_str());
            } else {
                text.push(' ');
                text.push_str(w);
            }
            sentence_left -= 1;
        }
        text.push('.');
        chunks.push(Chunk {
            source: format!("docs/{:03}.md", i / 20),
            index: (i % 20) as u32,
            text,
        });
    }
    (vocabulary, chunks)
}

fn bench(c: &mut Criterion) {
    let (vocabulary, chunks) = corpus();
    let text_bytes: usize = chunks.iter().map(|c| c.text.len()).sum();
    let started = Instant::now();
    let index = Bm25Index::build(chunks);
    let built = started.elapsed();
    println!(
        "kb: built {index:?} from {CHUNKS} chunks ({:.1} MB of text) in {built:.2?}",
        text_bytes as f64 / 1e6
    );

    // Ranks 40, 400 and 2000 of the Zipf vocabulary: a typical keyword query.
    let mixed = format!(
        "{} {} {}",
        vocabulary[40], vocabulary[400], vocabulary[2000]
    );
    // Ranks 0 to 2: each is in most chunks, so every posting list is near 10,000 long.
    let common = format!("{} {} {}", vocabulary[0], vocabulary[1], vocabulary[2]);
    for (name, query) in [("mixed", &mixed), ("common", &common)] {
        let hits = index.search(query, 5);
        assert_eq!(hits.len(), 5, "{name} query {query:?}");
    }

    let mut g = c.benchmark_group("kb_search_10k_chunks");
    g.bench_function("3_words_mixed_k5", |b| {
        b.iter(|| black_box(index.search(black_box(&mixed), 5)))
    });
    g.bench_function("3_words_common_k5", |b| {
        b.iter(|| black_box(index.search(black_box(&common), 5)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
