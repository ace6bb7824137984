//! An agent's document knowledge base: documents are cut into overlapping chunks
//! ([`chunk_document`]) and the chunks are ranked against a query with BM25
//! ([`Bm25Index::search`]); the `search_kb` tool of an agent answers with the best chunks.
//!
//! Why BM25 and why by hand: a knowledge base is a few hundred to a few thousand documents
//! (specifications, READMEs, notes) that an agent searches with a few keywords, and lexical
//! ranking finds identifiers and rare technical terms, which is what agents look up, without a
//! model or a network call. A full-text engine (tantivy) would add a large dependency tree for
//! what is an inverted index and one formula; this crate is linked by every binary and built on
//! small machines.
//!
//! Scoring is BM25 Okapi with the usual parameters:
//!
//! ```text
//! score(D, Q) = sum over distinct terms t of Q:
//!     idf(t) * tf(t, D) * (K1 + 1) / (tf(t, D) + K1 * (1 - B + B * |D| / avgdl))
//! idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))
//! ```
//!
//! where `N` is the number of chunks, `n(t)` the number of chunks containing `t`, `|D|` the
//! chunk's length in tokens and `avgdl` the mean length. The `1 +` inside the logarithm (as in
//! Lucene) keeps `idf` positive even for a term in more than half of the chunks, so adding a
//! common word to a query never lowers a chunk's score, and every chunk that matches a query
//! term scores above zero. A term repeated in a query counts once.
//!
//! Everything is deterministic: the same chunks and query give the same scores, bit for bit,
//! and ties are broken by chunk order (the order the chunks were given to [`Bm25Index::build`]).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Target chunk size in chars (about 300 tokens): big enough to hold a paragraph or a function
/// with its context, small enough that the best few chunks fit in a model's prompt and that
/// one long document does not win on term frequency alone.
pub const CHUNK_CHARS: usize = 1200;

/// Chars the next chunk repeats from the end of the previous one (at most), so that a sentence
/// cut at a chunk boundary is still found whole in one of the two chunks.
pub const CHUNK_OVERLAP: usize = 200;

/// Most chunks one index holds; [`Bm25Index::build`] keeps the first this many. The index is
/// held whole in a worker's memory: 100,000 chunks of [`CHUNK_CHARS`] are about 120 MB of text
/// plus postings, about what a worker can spare, and a query over them stays in milliseconds.
/// Chunk numbers also stay far inside the `u32` the postings store.
pub const MAX_KB_CHUNKS: usize = 100_000;

/// BM25 term-frequency saturation: the customary 1.2; a term's tenth occurrence in a chunk
/// adds little over its third.
pub const BM25_K1: f64 = 1.2;

/// BM25 length normalization: the customary 0.75; a long chunk needs more occurrences of a term
/// than a short one for the same score, but not proportionally more.
pub const BM25_B: f64 = 0.75;

/// A chunk is not cut at a boundary earlier than this many chars into it (half a chunk): a
/// paragraph break near the start would make a tiny chunk, so the cut goes to a line or word
/// boundary later on, or mid-word at [`CHUNK_CHARS`] when there is no whitespace at all.
const MIN_SPLIT_CHARS: usize = CHUNK_CHARS / 2;

/// Words too common in English to tell chunks apart (Lucene's English stop set), sorted for
/// binary search.
const STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

/// One piece of a document, the unit that is indexed and returned by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Relative path of the document the chunk comes from.
    pub source: String,
    /// The chunk's place in its document: 0 for the first.
    pub index: u32,
    /// The chunk's text, without leading or trailing whitespace.
    pub text: String,
}

/// Splits a document into chunks of at most [`CHUNK_CHARS`] chars, preferring to cut after a
/// paragraph break (a blank line), then after a line break, then after whitespace, in the second
/// half of a chunk; with no whitespace there the cut is at [`CHUNK_CHARS`], mid-word. Each chunk
/// after the first starts with at most [`CHUNK_OVERLAP`] chars from the end of the previous one,
/// beginning at a word start where there is one. Cuts fall on char boundaries, never inside a
/// UTF-8 char. Chunks are trimmed; an empty or whitespace-only document gives no chunks.
pub fn chunk_document(source: &str, text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    if text.trim().is_empty() {
        return chunks;
    }
    // The byte offset of every char, and of the end: positions below are indices into this.
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let total = bounds.len() - 1;
    let mut start = 0;
    loop {
        let cut = if total - start <= CHUNK_CHARS {
            total
        } else {
            split_point(text, &bounds, start)
        };
        let piece = text[bounds[start]..bounds[cut]].trim();
        if !piece.is_empty() {
            chunks.push(Chunk {
                source: source.to_owned(),
                index: chunks.len() as u32,
                text: piece.to_owned(),
            });
        }
        if cut == total || text[bounds[cut]..].trim().is_empty() {
            return chunks;
        }
        start = overlap_start(text, &bounds, start, cut);
    }
}

/// Where the chunk starting at char `start` ends (exclusive char index), when more than
/// [`CHUNK_CHARS`] chars remain.
fn split_point(text: &str, bounds: &[usize], start: usize) -> usize {
    let start_b = bounds[start];
    let min_b = bounds[start + MIN_SPLIT_CHARS];
    let window = &text[start_b..bounds[start + CHUNK_CHARS]];
    let late = |rel: usize| start_b + rel >= min_b;
    let cut_b = window
        .rfind("\n\n")
        .map(|r| r + 2)
        .filter(|&r| late(r))
        .or_else(|| window.rfind('\n').map(|r| r + 1).filter(|&r| late(r)))
        .or_else(|| {
            window
                .char_indices()
                .rev()
                .find(|&(_, c)| c.is_whitespace())
                .map(|(r, c)| r + c.len_utf8())
                .filter(|&r| late(r))
        })
        .map(|r| start_b + r);
    match cut_b {
        // A cut found by a search above is right after a char, so it is in `bounds`.
        Some(b) => bounds.binary_search(&b).unwrap_or_else(|i| i),
        None => start + CHUNK_CHARS,
    }
}

/// Where the chunk after the one spanning chars `start..cut` starts: [`CHUNK_OVERLAP`] chars
/// before `cut`, moved forward to the next word start if that falls inside a word and a word
/// starts before `cut`; always after `start`, so chunking makes progress.
fn overlap_start(text: &str, bounds: &[usize], start: usize, cut: usize) -> usize {
    let back = cut.saturating_sub(CHUNK_OVERLAP).max(start + 1);
    let back_b = bounds[back];
    let at_word_start = text[..back_b]
        .chars()
        .next_back()
        .is_none_or(char::is_whitespace);
    if at_word_start {
        return back;
    }
    match text[back_b..bounds[cut]]
        .char_indices()
        .find(|&(_, c)| c.is_whitespace())
    {
        Some((r, c)) => bounds
            .binary_search(&(back_b + r + c.len_utf8()))
            .unwrap_or_else(|i| i),
        None => back,
    }
}

/// Splits text into search terms: maximal runs of alphanumeric chars and `_` (Unicode-aware),
/// lower-cased, with leading and trailing `_` removed (`snake_case` stays one term, `__init__`
/// becomes `init`); terms of one char and English stop words (`the`, `and`, ...) are dropped.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map(|w| w.trim_matches('_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| w.chars().nth(1).is_some() && STOP_WORDS.binary_search(&w.as_str()).is_err())
        .collect()
}

/// One term of the index.
#[derive(Debug, Clone, Default)]
struct Term {
    /// `idf(t)`, computed once at build.
    idf: f64,
    /// (chunk number, occurrences in that chunk), in chunk order.
    postings: Vec<(u32, u32)>,
}

/// A BM25 index over chunks: an inverted index from each term to the chunks containing it,
/// with every chunk's length normalization computed once at build.
#[derive(Clone, Default)]
pub struct Bm25Index {
    chunks: Vec<Chunk>,
    terms: HashMap<String, Term>,
    /// `K1 * (1 - B + B * |D| / avgdl)` for every chunk: the length part of BM25's denominator.
    norms: Vec<f64>,
    /// Mean chunk length in tokens.
    avgdl: f64,
}

impl fmt::Debug for Bm25Index {
    // The postings would print the whole knowledge base; counts say what it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bm25Index")
            .field("chunks", &self.chunks.len())
            .field("terms", &self.terms.len())
            .field("avgdl", &self.avgdl)
            .finish()
    }
}

impl Bm25Index {
    /// Indexes the chunks, keeping the first [`MAX_KB_CHUNKS`] of them.
    pub fn build(mut chunks: Vec<Chunk>) -> Bm25Index {
        chunks.truncate(MAX_KB_CHUNKS);
        let mut terms: HashMap<String, Term> = HashMap::new();
        let mut lens = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let mut tokens = tokenize(&chunk.text);
            lens.push(tokens.len());
            tokens.sort_unstable();
            // Sorted, equal tokens are runs: one posting per run, its length the term frequency.
            let mut at = 0;
            while at < tokens.len() {
                let tf = tokens[at..]
                    .iter()
                    .take_while(|t| **t == tokens[at])
                    .count();
                let term = std::mem::take(&mut tokens[at]);
                terms
                    .entry(term)
                    .or_default()
                    .postings
                    .push((i as u32, tf as u32));
                at += tf;
            }
        }
        let n = chunks.len() as f64;
        for term in terms.values_mut() {
            let df = term.postings.len() as f64;
            term.idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        }
        let total: usize = lens.iter().sum();
        let avgdl = if chunks.is_empty() {
            0.0
        } else {
            total as f64 / n
        };
        let norms = lens
            .iter()
            .map(|&len| {
                let rel = if avgdl > 0.0 { len as f64 / avgdl } else { 1.0 };
                BM25_K1 * (1.0 - BM25_B + BM25_B * rel)
            })
            .collect();
        Bm25Index {
            chunks,
            terms,
            norms,
            avgdl,
        }
    }

    /// Number of chunks indexed.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The best `k` chunks for the query, highest score first, ties by chunk order; only chunks
    /// with a score above zero, that is chunks containing at least one query term. A query with
    /// no terms left after [`tokenize`] finds nothing.
    pub fn search(&self, query: &str, k: usize) -> Vec<(f64, &Chunk)> {
        if k == 0 || self.chunks.is_empty() {
            return Vec::new();
        }
        let mut query_terms: Vec<String> = Vec::new();
        for t in tokenize(query) {
            if !query_terms.contains(&t) {
                query_terms.push(t);
            }
        }
        let mut scores = vec![0.0f64; self.chunks.len()];
        let mut hit: Vec<u32> = Vec::new();
        for t in &query_terms {
            let Some(term) = self.terms.get(t) else {
                continue;
            };
            for &(i, tf) in &term.postings {
                let tf = f64::from(tf);
                let s = term.idf * tf * (BM25_K1 + 1.0) / (tf + self.norms[i as usize]);
                let slot = &mut scores[i as usize];
                // Every contribution is above zero, so zero means "not hit yet".
                if *slot == 0.0 {
                    hit.push(i);
                }
                *slot += s;
            }
        }
        let mut ranked: Vec<(f64, u32)> = hit
            .into_iter()
            .map(|i| (scores[i as usize], i))
            .filter(|&(s, _)| s > 0.0)
            .collect();
        let order =
            |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1));
        if ranked.len() > k {
            ranked.select_nth_unstable_by(k - 1, order);
            ranked.truncate(k);
        }
        ranked.sort_unstable_by(order);
        ranked
            .into_iter()
            .map(|(s, i)| (s, &self.chunks[i as usize]))
            .collect()
    }

    /// Every chunk, in the order given to [`Bm25Index::build`].
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }
}

#[cfg(test)]
mod tests;
