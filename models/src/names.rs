//! Name tokens for search: pure functions, no I/O.
//!
//! The index and the query side use the same [`tokenize`], so a name is found
//! by whatever a person types that tokenizes to a subset of its tokens.
//!
//! - **Folding.** NFKD, then the Latin/Greek/Cyrillic accent marks are dropped
//!   (`José` = `jose`, `Ｊｏｓé` = `jose`), then lowercase (and the few
//!   letters no decomposition folds: `ł`, `ø`, `ß`, ...), then NFC again so
//!   that kana voicing marks and Hangul syllables are whole characters. Marks
//!   that are part of a letter in other scripts (Devanagari, Thai vowel signs)
//!   are kept: dropping them would change the name.
//! - **Splitting.** Anything that is not a letter, digit or mark separates
//!   tokens: `O'Brien-Smith` → `o`, `brien`, `smith`.
//! - **CJK.** Chinese, Japanese and Korean names are written without spaces,
//!   and people type part of them (`陈`, `大文` for `陈大文`). A run of
//!   Han/kana/Hangul characters gives the whole run and every substring of it
//!   when the run is at most [`CJK_ALL_SUBSTRINGS`] characters (the usual
//!   name), otherwise the whole run, its bigrams and its single characters.
//!   Because the query is tokenized the same way, a query run matches exactly
//!   when it is a substring of the name (`大文` → `大文`, `大`, `文`, all
//!   indexed), with no special case at query time. A 3-character name costs
//!   6 tokens, a 4-character one 10.
//! - **Typos.** [`deletion_variants`] gives the strings one character shorter
//!   (symmetric-delete spelling correction): two tokens are one typo apart
//!   when they share a variant or one is a variant of the other, which covers
//!   one insertion, deletion, substitution or transposition (`narendar` /
//!   `narendra`, `jonh` / `john`). Only for tokens of 4 or more characters,
//!   and not for CJK runs, where one character less is another name (and
//!   the substrings already match).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::email::Email;

/// Longest token kept, in characters; longer ones are cut (nobody types more).
pub const MAX_TOKEN_CHARS: usize = 48;

/// CJK runs up to this many characters are indexed with all their substrings.
pub const CJK_ALL_SUBSTRINGS: usize = 4;

/// Shortest token that gets deletion variants (one-typo matching).
pub const MIN_TYPO_CHARS: usize = 4;

/// The search tokens of a name, deduplicated, in first-occurrence order.
/// Never panics; an empty or punctuation-only name gives no token.
pub fn tokenize(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in split_words(&fold(name)) {
        let chars: Vec<char> = word.chars().take(MAX_TOKEN_CHARS).collect();
        if chars.first().copied().is_some_and(is_cjk) {
            push_cjk(&chars, &mut out);
        } else {
            push_unique(&mut out, chars.into_iter().collect());
        }
    }
    out
}

/// The words of a name as a person reads them: like [`tokenize`] but a CJK
/// run stays one word (`陈大文`), with no substrings. Used to tell a whole-name
/// match from a partial one.
pub fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in split_words(&fold(name)) {
        push_unique(&mut out, word.chars().take(MAX_TOKEN_CHARS).collect());
    }
    out
}

/// Every string with exactly one character deleted, deduplicated. Empty for
/// tokens shorter than [`MIN_TYPO_CHARS`] characters and for CJK tokens.
pub fn deletion_variants(token: &str) -> Vec<String> {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < MIN_TYPO_CHARS || chars.iter().copied().any(is_cjk) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(chars.len());
    for skip in 0..chars.len() {
        let variant: String = chars
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, c)| *c)
            .collect();
        push_unique(&mut out, variant);
    }
    out
}

/// True when `a` and `b` are one typo apart (and both long enough to have
/// deletion variants): one is a deletion variant of the other, or they share
/// one. Equal tokens are not a typo.
pub fn one_typo_apart(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let va = deletion_variants(a);
    let vb = deletion_variants(b);
    if va.is_empty() || vb.is_empty() {
        return false;
    }
    va.iter().any(|v| v == b) || vb.iter().any(|v| v == a) || va.iter().any(|v| vb.contains(v))
}

/// True when `token` (an indexed token) is one typo from `query` (typed):
/// both long enough to be corrected ([`one_typo_apart`]), or, for a query of
/// [`MIN_TYPO_CHARS`] characters or more, a three-letter token that is the
/// query with one character left out (`tann` → `tan`, `anne` → `ann`). A
/// short query is never corrected (`jhn` does not find `john`).
pub fn one_typo_from(query: &str, token: &str) -> bool {
    let q = query.chars().count();
    if q < MIN_TYPO_CHARS {
        return false;
    }
    let t = token.chars().count();
    if t + 1 == MIN_TYPO_CHARS && q == MIN_TYPO_CHARS && !token.chars().any(is_cjk) {
        return deletion_variants(query).iter().any(|v| v == token);
    }
    one_typo_apart(query, token)
}

/// What a search box query looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    /// Only digits and phone separators, at least 4 digits.
    Phone {
        /// The digits, without separators or `+`.
        digits: String,
        /// Written with `+` or `00` in front: the country code is included.
        international: bool,
    },
    /// A whole, valid email address.
    Email(Email),
    /// Contains `@` but is not a whole address (`ann@`, `ann@exa`): a prefix, lowercased.
    EmailFragment(String),
    /// Anything else: the name tokens (empty when there is nothing to search).
    Name(Vec<String>),
}

/// Decides what a search box query is.
pub fn classify(query: &str) -> QueryKind {
    let q = query.trim();
    if q.contains('@') {
        return match Email::parse(q) {
            Ok(email) => QueryKind::Email(email),
            Err(_) => QueryKind::EmailFragment(q.to_lowercase()),
        };
    }
    if let Some((digits, international)) = phone_digits(q) {
        return QueryKind::Phone {
            digits,
            international,
        };
    }
    QueryKind::Name(tokenize(q))
}

fn phone_digits(q: &str) -> Option<(String, bool)> {
    let mut digits = String::new();
    for (i, c) in q.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => {}
            ' ' | '-' | '(' | ')' | '.' | '/' | '\u{a0}' => {}
            _ => return None,
        }
    }
    if digits.len() < 4 {
        return None;
    }
    let international = q.starts_with('+') || digits.starts_with("00");
    let digits = match digits.strip_prefix("00") {
        Some(rest) if !q.starts_with('+') => rest.to_string(),
        _ => digits,
    };
    Some((digits, international))
}

/// NFKD, accents dropped, lowercase, NFC; repeated until it no longer changes
/// (a few compatibility characters lowercase into something that decomposes
/// again), so that folding folded text is a no-op.
fn fold(text: &str) -> String {
    let mut current: String = text.to_string();
    for _ in 0..4 {
        let next: String = current
            .nfkd()
            .filter(|c| !is_accent(*c))
            .flat_map(char::to_lowercase)
            .flat_map(fold_letter)
            .nfc()
            .collect();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Latin letters with a stroke or a ligature, which no decomposition folds
/// but people type without (`Łukasz` = `lukasz`, `Søren` = `soren`).
fn fold_letter(c: char) -> FoldedLetter {
    let s: &'static str = match c {
        'ł' => "l",
        'ø' => "o",
        'đ' => "d",
        'ħ' => "h",
        'ı' => "i",
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'þ' => "th",
        _ => return FoldedLetter::One(Some(c)),
    };
    FoldedLetter::Many(s.chars())
}

enum FoldedLetter {
    One(Option<char>),
    Many(std::str::Chars<'static>),
}

impl Iterator for FoldedLetter {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        match self {
            FoldedLetter::One(c) => c.take(),
            FoldedLetter::Many(chars) => chars.next(),
        }
    }
}

/// Accent marks of the Latin, Greek and Cyrillic scripts (the combining
/// diacritical mark blocks).
fn is_accent(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

/// Han, kana, Hangul and the iteration mark: scripts written without spaces.
/// True for Chinese, Japanese and Korean characters (names written without
/// spaces, indexed by substrings, never typo-corrected).
pub fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{1100}'..='\u{11FF}'     // Hangul Jamo
        | '\u{3005}'                // 々
        | '\u{3040}'..='\u{30FF}'   // Hiragana, Katakana
        | '\u{3130}'..='\u{318F}'   // Hangul compatibility jamo
        | '\u{31F0}'..='\u{31FF}'   // Katakana phonetic extensions
        | '\u{3400}'..='\u{4DBF}'   // Han extension A
        | '\u{4E00}'..='\u{9FFF}'   // Han
        | '\u{A960}'..='\u{A97F}'   // Hangul Jamo extended A
        | '\u{AC00}'..='\u{D7FF}'   // Hangul syllables, Jamo extended B
        | '\u{F900}'..='\u{FAFF}'   // Han compatibility
        | '\u{20000}'..='\u{3134F}') // Han extensions B..G
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

/// Splits folded text into words: runs of word characters, cut again where
/// the text switches between CJK and other scripts (`陈ann` → `陈`, `ann`).
/// A mark stays with the character before it.
fn split_words(folded: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut word_is_cjk = false;
    for c in folded.chars() {
        if !is_word_char(c) {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        let c_is_cjk = if is_combining_mark(c) && !word.is_empty() {
            word_is_cjk
        } else {
            is_cjk(c)
        };
        if !word.is_empty() && c_is_cjk != word_is_cjk {
            words.push(std::mem::take(&mut word));
        }
        word_is_cjk = c_is_cjk;
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn push_cjk(run: &[char], out: &mut Vec<String>) {
    let n = run.len();
    let lengths: Vec<usize> = if n <= CJK_ALL_SUBSTRINGS {
        (1..=n).rev().collect()
    } else {
        vec![n, 2, 1]
    };
    for len in lengths {
        for start in 0..=(n - len) {
            push_unique(out, run[start..start + len].iter().collect());
        }
    }
}

fn push_unique(out: &mut Vec<String>, token: String) {
    if !token.is_empty() && !out.contains(&token) {
        out.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(s: &str) -> Vec<String> {
        tokenize(s)
    }

    #[test]
    fn folds_case_accents_and_width() {
        assert_eq!(toks("José"), vec!["jose"]);
        assert_eq!(toks("JOSÉ  Müller"), vec!["jose", "muller"]);
        assert_eq!(toks("Ｊｏｓé"), vec!["jose"]);
        assert_eq!(toks("Zoë Ångström"), vec!["zoe", "angstrom"]);
        assert_eq!(
            toks("Łukasz Søren Straße"),
            vec!["lukasz", "soren", "strasse"]
        );
    }

    #[test]
    fn punctuation_splits_and_duplicates_go() {
        assert_eq!(
            toks("O'Brien-Smith, Ann"),
            vec!["o", "brien", "smith", "ann"]
        );
        assert_eq!(toks("Ann ann ANN"), vec!["ann"]);
        assert!(toks("  -- !! ").is_empty());
        assert!(toks("").is_empty());
    }

    #[test]
    fn cjk_runs_give_the_run_and_its_substrings() {
        assert_eq!(
            toks("陈大文"),
            vec!["陈大文", "陈大", "大文", "陈", "大", "文"]
        );
        // A query run is a subset of the name's tokens exactly when it is a substring.
        let name = toks("陈大文");
        for q in ["陈", "大文", "陈大文"] {
            assert!(toks(q).iter().all(|t| name.contains(t)), "{q}");
        }
        assert!(!toks("文大").iter().all(|t| name.contains(t)));
        // Mixed scripts split where the script changes.
        assert_eq!(toks("Ann陈"), vec!["ann", "陈"]);
        // Kana voicing marks stay on their letter, Hangul stays in syllables.
        assert_eq!(toks("ガ")[0], "ガ");
        assert_eq!(toks("김민수")[0], "김민수");
        // Long runs: the run, bigrams and single characters.
        let long = toks("一二三四五六");
        assert_eq!(long[0], "一二三四五六");
        assert!(long.contains(&"三四".to_string()) && long.contains(&"六".to_string()));
        assert!(!long.contains(&"一二三".to_string()));
    }

    #[test]
    fn other_scripts_keep_their_marks() {
        assert_eq!(toks("नरेंद्र"), vec!["नरेंद्र"]);
        assert_eq!(words("陈大文 Tan"), vec!["陈大文", "tan"]);
    }

    #[test]
    fn deletion_variants_cover_one_typo() {
        assert_eq!(deletion_variants("john"), vec!["ohn", "jhn", "jon", "joh"]);
        assert!(deletion_variants("ann").is_empty());
        assert!(deletion_variants("欧阳大文").is_empty());
        assert_eq!(deletion_variants("aaaa"), vec!["aaa"]);
        assert!(one_typo_apart("narendar", "narendra"));
        assert!(one_typo_apart("jonh", "john"));
        assert!(one_typo_apart("jhon", "john"));
        assert!(one_typo_apart("johnn", "john"));
        assert!(
            !one_typo_apart("jon", "john"),
            "3-letter tokens have no typo"
        );
        assert!(!one_typo_apart("john", "john"));
        assert!(one_typo_from("tann", "tan"));
        assert!(one_typo_from("anne", "ann"));
        assert!(!one_typo_from("tanx", "ann"), "two edits");
        assert!(
            !one_typo_from("jhn", "john"),
            "a short query is not corrected"
        );
        assert!(!one_typo_from("tan", "tann"));
        assert!(one_typo_from("jonh", "john"));
        assert!(!one_typo_apart("john", "mary"));
    }

    #[test]
    fn classifies_what_people_type() {
        assert_eq!(
            classify("+65 8122 6418"),
            QueryKind::Phone {
                digits: "6581226418".into(),
                international: true
            }
        );
        assert_eq!(
            classify("8122-6418"),
            QueryKind::Phone {
                digits: "81226418".into(),
                international: false
            }
        );
        assert_eq!(
            classify("0065 8122 6418"),
            QueryKind::Phone {
                digits: "6581226418".into(),
                international: true
            }
        );
        assert_eq!(
            classify(" Ann.Tan@Example.com "),
            QueryKind::Email(Email::parse("ann.tan@example.com").unwrap())
        );
        assert_eq!(classify("Ann@"), QueryKind::EmailFragment("ann@".into()));
        assert_eq!(
            classify("ann@exa"),
            QueryKind::EmailFragment("ann@exa".into())
        );
        assert_eq!(
            classify("Tan, Ann"),
            QueryKind::Name(vec!["tan".into(), "ann".into()])
        );
        assert_eq!(classify("123"), QueryKind::Name(vec!["123".into()]));
        assert_eq!(classify("  "), QueryKind::Name(vec![]));
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "[a-zA-Zàéîõüñçø' .,-]{0,30}",
            "[陈大文欧阳김민수がガカ\u{3099} a-z]{0,20}",
        ]
    }

    proptest! {
        #[test]
        fn tokenize_never_panics_and_tokens_are_clean(name in name_strategy()) {
            for t in tokenize(&name) {
                prop_assert!(!t.is_empty());
                prop_assert!(t.chars().count() <= MAX_TOKEN_CHARS);
                prop_assert!(t.chars().all(is_word_char), "{:?}", t);
                prop_assert_eq!(t.to_lowercase(), t.clone());
            }
        }

        #[test]
        fn tokenize_is_idempotent_on_its_joined_output(name in name_strategy()) {
            let once = tokenize(&name);
            let twice = tokenize(&once.join(" "));
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn accents_and_case_are_folded(base in "[a-z]{1,12}", accent in "[\u{0300}\u{0301}\u{0308}\u{0327}]") {
            let accented: String = base.chars().flat_map(|c| [c, accent.chars().next().unwrap_or('\u{0301}')]).collect();
            prop_assert_eq!(tokenize(&accented), vec![base.clone()]);
            prop_assert_eq!(tokenize(&base.to_uppercase()), vec![base]);
        }

        #[test]
        fn deletion_variants_are_one_char_shorter(token in "\\PC{0,20}") {
            let n = token.chars().count();
            let variants = deletion_variants(&token);
            prop_assert!(variants.len() <= n);
            for v in &variants {
                prop_assert_eq!(v.chars().count(), n - 1);
            }
            if n < MIN_TYPO_CHARS {
                prop_assert!(variants.is_empty());
            }
        }

        #[test]
        fn classify_never_panics(q in "\\PC{0,60}") {
            let _ = classify(&q);
        }
    }
}
