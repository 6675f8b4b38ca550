//! LIST and LSUB patterns (RFC 3501 §6.3.8, RFC 9051 §6.3.9): `*` matches
//! anything, `%` anything but the hierarchy delimiter. A pattern is compiled
//! once per command and run against each name as a set of pattern
//! positions advanced one name character at a time (a Thompson NFA, the
//! set a bit vector), so a match costs the name's length times the
//! pattern's length in 64-bit words, whatever the pattern. Matching by
//! backtracking took exponential time on `*%*%*%…x`.

use std::collections::HashMap;

use mail_types::MailboxName;

use super::mailbox::DELIMITER;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    Star,
    Percent,
}

/// A compiled pattern.
#[derive(Debug)]
pub struct Pattern {
    /// Pattern positions 0..=len; `len` is "matched to the end".
    len: usize,
    words: usize,
    star: Vec<u64>,
    percent: Vec<u64>,
    wild: Vec<u64>,
    /// For each character of the pattern, the positions that take it.
    literal: HashMap<char, Vec<u64>>,
    /// RFC 3501 §5.1: INBOX is case-insensitive; the pattern with its
    /// first five characters upper-cased, tried for INBOX and its children.
    inbox: Option<Box<Pattern>>,
}

fn bit(set: &[u64], i: usize) -> bool {
    set[i / 64] >> (i % 64) & 1 == 1
}

fn set_bit(set: &mut [u64], i: usize) {
    set[i / 64] |= 1 << (i % 64);
}

/// `out |= (a & b) << 1`, across words.
fn or_shifted_and(out: &mut [u64], a: &[u64], b: &[u64]) {
    let mut carry = 0;
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        let v = x & y;
        *o |= v << 1 | carry;
        carry = v >> 63;
    }
}

fn or_and(out: &mut [u64], a: &[u64], b: &[u64]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o |= x & y;
    }
}

impl Pattern {
    pub fn new(pattern: &str) -> Pattern {
        let mut pattern_compiled = Pattern::compile(pattern);
        let upper: String =
            pattern.chars().take(5).flat_map(char::to_uppercase).chain(pattern.chars().skip(5)).collect();
        if upper != pattern {
            pattern_compiled.inbox = Some(Box::new(Pattern::compile(&upper)));
        }
        pattern_compiled
    }

    fn compile(pattern: &str) -> Pattern {
        // A run of wildcards is one: `*` if it holds one, else `%`.
        let mut tokens: Vec<Token> = Vec::new();
        let mut literals = 0;
        for c in pattern.chars() {
            let t = match c {
                '*' => Token::Star,
                '%' => Token::Percent,
                c => Token::Char(c),
            };
            match (tokens.last_mut(), t) {
                (Some(last @ Token::Percent), Token::Star) => *last = Token::Star,
                (Some(Token::Star | Token::Percent), Token::Star | Token::Percent) => {}
                _ => {
                    literals += usize::from(matches!(t, Token::Char(_)));
                    tokens.push(t);
                }
            }
        }
        // Each literal takes a character of the name: a pattern with more
        // of them than the longest name cannot match; keep it short.
        if literals > MailboxName::MAX_LEN {
            tokens = vec![Token::Char('\0'); MailboxName::MAX_LEN + 1];
        }
        let len = tokens.len();
        let words = len / 64 + 1;
        let mut p = Pattern {
            len,
            words,
            star: vec![0; words],
            percent: vec![0; words],
            wild: vec![0; words],
            literal: HashMap::new(),
            inbox: None,
        };
        for (i, t) in tokens.iter().enumerate() {
            match t {
                Token::Star => set_bit(&mut p.star, i),
                Token::Percent => set_bit(&mut p.percent, i),
                Token::Char(c) => set_bit(p.literal.entry(*c).or_insert_with(|| vec![0; words]), i),
            }
            if matches!(t, Token::Star | Token::Percent) {
                set_bit(&mut p.wild, i);
            }
        }
        p
    }

    /// A wildcard may match nothing: from its position, the next is reached too.
    fn close(&self, states: &mut [u64]) {
        let wild_states: Vec<u64> = states.to_vec();
        or_shifted_and(states, &wild_states, &self.wild);
    }

    fn run(&self, name: &str) -> bool {
        let mut states = vec![0u64; self.words];
        set_bit(&mut states, 0);
        self.close(&mut states);
        let mut next = vec![0u64; self.words];
        for c in name.chars() {
            next.fill(0);
            if let Some(lit) = self.literal.get(&c) {
                or_shifted_and(&mut next, &states, lit);
            }
            or_and(&mut next, &states, &self.star);
            if c != DELIMITER {
                or_and(&mut next, &states, &self.percent);
            }
            self.close(&mut next);
            std::mem::swap(&mut states, &mut next);
            if states.iter().all(|w| *w == 0) {
                return false;
            }
        }
        bit(&states, self.len)
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.run(name) {
            return true;
        }
        let inbox = name == "INBOX" || name.starts_with("INBOX/");
        inbox && self.inbox.as_ref().is_some_and(|p| p.run(name))
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn matches(pattern: &str, name: &str) -> bool {
        Pattern::new(pattern).matches(name)
    }

    #[test]
    fn wildcards() {
        assert!(matches("*", "a/b/c"));
        assert!(matches("%", "a"));
        assert!(!matches("%", "a/b"));
        assert!(matches("a/%", "a/b"));
        assert!(!matches("a/%", "a/b/c"));
        assert!(matches("a/*", "a/b/c"));
        assert!(matches("inbox", "INBOX"));
        assert!(matches("In%", "INBOX"));
        assert!(matches("inbox/%", "INBOX/x"));
        assert!(!matches("Sent", "Drafts"));
        assert!(matches("%/%", "a/b"));
        assert!(!matches("%/%", "a/b/c"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXbY"));
        assert!(matches("%%x", "abx"));
        assert!(!matches("%*%x", "a/b"), "a run holding * is *");
        assert!(matches("%*%x", "a/bx"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("*", ""));
        assert!(matches("Ärger/%", "Ärger/ü"));
    }

    /// Against a plain backtracking matcher on small inputs: same answers.
    #[test]
    fn agrees_with_backtracking_on_small_inputs() {
        fn slow(p: &[char], n: &[char]) -> bool {
            match p.split_first() {
                None => n.is_empty(),
                Some(('*', rest)) => (0..=n.len()).any(|i| slow(rest, &n[i..])),
                Some(('%', rest)) => {
                    (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != '/').any(|i| slow(rest, &n[i..]))
                }
                Some((c, rest)) => n.first() == Some(c) && slow(rest, &n[1..]),
            }
        }
        let alphabet = ['a', 'b', '/', '*', '%'];
        let mut all = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> =
                all.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            all.extend(longer);
        }
        all.sort();
        all.dedup();
        for p in &all {
            let compiled = Pattern::new(p);
            let pc: Vec<char> = p.chars().collect();
            for n in all.iter().filter(|n| !n.contains(['*', '%'])) {
                let nc: Vec<char> = n.chars().collect();
                assert_eq!(compiled.matches(n), slow(&pc, &nc), "{p:?} vs {n:?}");
            }
        }
    }

    #[test]
    fn pathological_patterns_take_linear_time() {
        let pattern = "*%".repeat(5000) + "x";
        let name = "a/".repeat(499) + "b";
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert!(!Pattern::new(&pattern).matches(&name));
        }
        let many = "*a".repeat(900) + "b";
        for _ in 0..100 {
            assert!(!Pattern::new(&many).matches(&"a".repeat(999)));
        }
        // Generous for a loaded machine; backtracking needs years here.
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }
}
